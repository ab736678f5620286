// A small container runtime's network side, on libcni: it loads a conflist and runs ADD, CHECK or DEL for
// one container exactly as containerd or CRI-O would (VERSION negotiation, prevResult chaining, the result
// cache, capability args), and prints what libcni returns as JSON. The kube-cni tests drive it.
//
//	driver -op add|check|del -confdir DIR -name NET -netns PATH -id ID [-ifname eth0] [-binpath DIRS]
//	       [-cachedir DIR] [-capargs JSON] [-args K=V;K=V]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	op := flag.String("op", "add", "add, check or del")
	confDir := flag.String("confdir", "/etc/cni/net.d", "where the conflist is")
	name := flag.String("name", "", "the network's name in the conflist")
	netns := flag.String("netns", "", "the sandbox's netns path (may be empty for del)")
	id := flag.String("id", "", "the container ID")
	ifname := flag.String("ifname", "eth0", "the interface name in the sandbox")
	binPath := flag.String("binpath", "/opt/cni/bin", "plugin directories, colon-separated")
	cacheDir := flag.String("cachedir", "", "libcni's result cache (instead of /var/lib/cni)")
	capArgs := flag.String("capargs", "", "capability args as JSON, e.g. {\"portMappings\": [...]}")
	args := flag.String("args", "", "CNI_ARGS as K=V;K=V")
	flag.Parse()

	list, err := libcni.LoadConfList(*confDir, *name)
	if err != nil {
		fail("load", err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(*binPath), *cacheDir, nil)
	rt := &libcni.RuntimeConf{ContainerID: *id, NetNS: *netns, IfName: *ifname}
	if *capArgs != "" {
		if err := json.Unmarshal([]byte(*capArgs), &rt.CapabilityArgs); err != nil {
			fail("capargs", err)
		}
	}
	for _, kv := range strings.Split(*args, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			rt.Args = append(rt.Args, [2]string{k, v})
		}
	}

	ctx := context.Background()
	switch *op {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail("add", err)
		}
		out, _ := json.Marshal(result)
		fmt.Println(string(out))
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail("check", err)
		}
		fmt.Println(`{"ok": true}`)
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail("del", err)
		}
		fmt.Println(`{"ok": true}`)
	default:
		fail("op", fmt.Errorf("unknown -op %q", *op))
	}
}

// fail prints libcni's error as JSON on stdout (code and message when the plugin returned CNI error JSON)
// and exits 1, so a test can assert on what the runtime would have shown.
func fail(stage string, err error) {
	out, _ := json.Marshal(map[string]interface{}{"stage": stage, "error": err.Error(), "detail": err})
	fmt.Println(string(out))
	os.Exit(1)
}

// weft-cnitool: weft's own small libcni driver.  It takes cnitool's command line and
// environment, so the commands in weft's README work the same with upstream cnitool;
// it is built from Debian's libcni (golang-github-appc-cni-dev) because cnitool itself
// is not packaged there.  `make cnitool` builds it into build/cnitool.
//
//	cnitool add|check|del NETWORK NETNS
//
//	NETCONFPATH  directory with the network configurations [/etc/cni/net.d];
//	             *.conflist first, then *.conf / *.json (libcni's LoadConfList)
//	CNI_PATH     plugin search path, colon separated
//	CNI_IFNAME   interface name inside NETNS [eth0]
//	CNI_ARGS     KEY=VALUE;KEY=VALUE pairs handed to every plugin
//	CAP_ARGS     JSON object of capability arguments (runtimeConfig), e.g.
//	             {"ips": ["10.22.0.9/24"], "mac": "02:00:00:00:00:09"}
//	CNI_CACHE_DIR    weft's addition: where libcni keeps results [/var/lib/cni]
//	CNI_CONTAINERID  weft's addition: the container ID, as a runtime or Multus passes
//	                 its sandbox ID [derived from NETNS]
//
// Without CNI_CONTAINERID the container ID is derived from the absolute NETNS path, so
// add, check and del of one namespace name the same attachment.  On success `add` prints the result JSON;
// on failure the error libcni returns goes to stderr, followed by a line
// "code: N" when a plugin answered with a CNI error, and the exit status is 1.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

const usage = `usage: cnitool add|check|del NETWORK NETNS

environment: NETCONFPATH [/etc/cni/net.d], CNI_PATH, CNI_IFNAME [eth0],
             CNI_ARGS (K=V;K=V), CAP_ARGS (JSON object), CNI_CACHE_DIR [/var/lib/cni],
             CNI_CONTAINERID [cnitool-<hash of NETNS>]
`

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

// pairs splits CNI_ARGS ("A=1;B=2") the way plugins read it back; an empty value is
// kept (IgnoreUnknown=true is common, but so is K8S_POD_NAMESPACE=).
func pairs(raw string) ([][2]string, error) {
	if raw == "" {
		return nil, nil
	}
	var out [][2]string
	for _, item := range strings.Split(raw, ";") {
		key, value, found := strings.Cut(item, "=")
		if !found || key == "" {
			return nil, fmt.Errorf("CNI_ARGS: %q is not KEY=VALUE", item)
		}
		out = append(out, [2]string{key, value})
	}
	return out, nil
}

func capabilities(raw string) (map[string]interface{}, error) {
	if raw == "" {
		return nil, nil
	}
	caps := map[string]interface{}{}
	if err := json.Unmarshal([]byte(raw), &caps); err != nil {
		return nil, fmt.Errorf("CAP_ARGS is not a JSON object: %w", err)
	}
	return caps, nil
}

func runtimeConf(netns string) (*libcni.RuntimeConf, error) {
	path, err := filepath.Abs(netns)
	if err != nil {
		return nil, err
	}
	args, err := pairs(os.Getenv("CNI_ARGS"))
	if err != nil {
		return nil, err
	}
	caps, err := capabilities(os.Getenv("CAP_ARGS"))
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256([]byte(path))
	return &libcni.RuntimeConf{
		ContainerID:    envOr("CNI_CONTAINERID", "cnitool-"+hex.EncodeToString(digest[:10])),
		NetNS:          path,
		IfName:         envOr("CNI_IFNAME", "eth0"),
		Args:           args,
		CapabilityArgs: caps,
	}, nil
}

func run(command, network, netns string) error {
	list, err := libcni.LoadConfList(envOr("NETCONFPATH", "/etc/cni/net.d"), network)
	if err != nil {
		return err
	}
	rt, err := runtimeConf(netns)
	if err != nil {
		return err
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")),
		envOr("CNI_CACHE_DIR", libcni.CacheDir), nil)
	ctx := context.Background()
	switch command {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		if result != nil {
			return result.Print()
		}
		return nil
	case "check":
		return cni.CheckNetworkList(ctx, list, rt)
	case "del":
		return cni.DelNetworkList(ctx, list, rt)
	}
	return fmt.Errorf("unknown command %q", command)
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "add", "check", "del":
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2], os.Args[3]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		var cniErr *types.Error
		if errors.As(err, &cniErr) {
			fmt.Fprintf(os.Stderr, "code: %d\n", cniErr.Code)
		}
		os.Exit(1)
	}
}

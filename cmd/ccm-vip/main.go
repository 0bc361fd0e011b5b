// Command ccm-vip holds the floating IP while this node is the ready leader
// and announces it with gratuitous ARP.
package main

import (
	"github.com/convex-cluster-manager/ccm/services/vip"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
)

func main() { daemon.Exec(vip.Spec()) }

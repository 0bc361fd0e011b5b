// Command ccm-elector campaigns for the cluster's leader key, renews it with
// revision fencing and publishes this node's role.
package main

import (
	"github.com/convex-cluster-manager/ccm/services/elector"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
)

func main() { daemon.Exec(elector.Spec()) }

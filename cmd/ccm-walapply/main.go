// Command ccm-walapply applies the WAL stream to this passive node's shadow
// database and reports the applied position and lag.
package main

import (
	"github.com/convex-cluster-manager/ccm/services/walapply"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
)

func main() { daemon.Exec(walapply.Spec()) }

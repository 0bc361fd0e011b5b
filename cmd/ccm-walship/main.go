// Command ccm-walship captures the leader database's WAL with Litestream and
// appends it to the fenced WAL stream while this node leads.
package main

import (
	"github.com/convex-cluster-manager/ccm/services/walship"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
)

func main() { daemon.Exec(walship.Spec()) }

// Command ccm-snapshot stores periodic full snapshots of the database, taken on
// a caught-up passive, in the cluster's NATS Object Store.
package main

import (
	"github.com/convex-cluster-manager/ccm/services/snapshot"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
)

func main() { daemon.Exec(snapshot.Spec()) }

// Command ccm-storage replicates the backend's storage/ directory: the
// leader publishes its files to the cluster, passives mirror them.
package main

import (
	"github.com/convex-cluster-manager/ccm/services/storage"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
)

func main() { daemon.Exec(storage.Spec()) }

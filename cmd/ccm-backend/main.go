// Command ccm-backend runs the Convex backend's systemd unit on the leader only,
// installing the replicated database on promotion.
package main

import (
	"github.com/convex-cluster-manager/ccm/services/backend"
	"github.com/convex-cluster-manager/ccm/shared/daemon"
)

func main() { daemon.Exec(backend.Spec()) }

package daemon

import (
	"encoding/json"

	"github.com/nats-io/nats.go/micro"
)

// statusHandler replies with d.Status() as JSON, plus its health.
func statusHandler(d Daemon) micro.HandlerFunc {
	return func(req micro.Request) {
		reply := struct {
			Healthy bool   `json:"healthy"`
			Error   string `json:"error,omitempty"`
			Status  any    `json:"status"`
		}{Healthy: true, Status: d.Status()}
		if err := d.Healthy(); err != nil {
			reply.Healthy, reply.Error = false, err.Error()
		}
		b, err := json.Marshal(reply)
		if err != nil {
			req.Error("500", "encode status: "+err.Error(), nil)
			return
		}
		req.Respond(b)
	}
}

package api

import (
	"net/http"

	"github.com/roosthub/roost/dataplane"
)

// handleDeviceSession describes a device's sessions in the data plane:
// each client id's subscriptions and queue.
func handleDeviceSession(ds deviceStore, dp dataplane.DataPlane) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		d, err := liveDevice(r, ds, dp)
		if err != nil {
			return err
		}
		s, err := dp.Session(r.Context(), d.Tenant, d.Name)
		if err != nil {
			return err
		}
		if s.Sessions == nil {
			s.Sessions = []dataplane.ClientSession{}
		}
		for i := range s.Sessions {
			if s.Sessions[i].Subscriptions == nil {
				s.Sessions[i].Subscriptions = []dataplane.Subscription{}
			}
		}
		writeJSON(w, http.StatusOK, s)
		return nil
	}
}

type purged struct {
	Purged int `json:"purged"`
}

// handleQueuePurge drops every message queued for the device's sessions.
func handleQueuePurge(ds deviceStore, dp dataplane.DataPlane) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		d, err := liveDevice(r, ds, dp)
		if err != nil {
			return err
		}
		n, err := dp.PurgeQueue(r.Context(), d.Tenant, d.Name)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, purged{Purged: n})
		return nil
	}
}

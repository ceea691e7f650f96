package policy

import (
	"context"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
)

// TestIncrementalCompile: random changes handed to the enforcer as an
// informer would — only the objects that changed, one to three per sync —
// leave the table what a fresh enforcer's full sync of the same model
// writes, though each sync compiles again only the fragments the changes
// reach.
func TestIncrementalCompile(t *testing.T) {
	for seed := range uint64(16) {
		r := rand.New(rand.NewPCG(seed, 21))
		w := newWorld(int(seed % 2))
		e, rec := recorded(t)
		load(t, e, w)
		for step := range 60 {
			prev := snapshot(w)
			for range 1 + r.IntN(3) {
				randomChange(r, w)
			}
			applyChanges(t, e, prev, w)
			res, err := e.Sync(context.Background())
			must(t, err)
			if res.Full {
				t.Fatalf("seed %d step %d: a full sync (%s), want partial", seed, step, res.Reason)
			}
			fresh, freshRec := recorded(t)
			load(t, fresh, w)
			if got, want := rec.Dump(), freshRec.Dump(); got != want {
				t.Fatalf("seed %d step %d: incremental compilation differs from a fresh one:\n%s", seed, step, lineDiff(want, got))
			}
		}
	}
}

func snapshot(w *world) *world {
	return &world{pods: slices.Clone(w.pods), namespaces: maps.Clone(w.namespaces), policies: slices.Clone(w.policies),
		admins: slices.Clone(w.admins), baselines: slices.Clone(w.baselines), nodes: slices.Clone(w.nodes)}
}

// applyChanges updates or deletes in e exactly the objects that differ
// between prev and w.
func applyChanges(t *testing.T, e *Enforcer, prev, w *world) {
	t.Helper()
	pods := map[Name]Pod{}
	for _, p := range prev.pods {
		pods[p.Name] = p
	}
	for _, p := range w.pods {
		if old, ok := pods[p.Name]; !ok || !reflect.DeepEqual(old, p) {
			must(t, e.UpdatePod(p))
		}
		delete(pods, p.Name)
	}
	for n := range pods {
		e.DeletePod(n)
	}
	for name, ns := range w.namespaces {
		if old, ok := prev.namespaces[name]; !ok || !reflect.DeepEqual(old, ns) {
			must(t, e.UpdateNamespace(ns))
		}
	}
	for name := range prev.namespaces {
		if _, ok := w.namespaces[name]; !ok {
			e.DeleteNamespace(name)
		}
	}
	pols := map[Name]Policy{}
	for _, p := range prev.policies {
		pols[p.Name] = p
	}
	for _, p := range w.policies {
		if old, ok := pols[p.Name]; !ok || !reflect.DeepEqual(old, p) {
			must(t, e.UpdatePolicy(p))
		}
		delete(pols, p.Name)
	}
	for n := range pols {
		e.DeletePolicy(n)
	}
	nodes := map[string]Node{}
	for _, n := range prev.nodes {
		nodes[n.Name] = n
	}
	for _, n := range w.nodes {
		if old, ok := nodes[n.Name]; !ok || !reflect.DeepEqual(old, n) {
			must(t, e.UpdateNode(n))
		}
		delete(nodes, n.Name)
	}
	for n := range nodes {
		e.DeleteNode(n)
	}
	admins := map[string]AdminPolicy{}
	for _, a := range prev.admins {
		admins[a.Name] = a
	}
	for _, a := range w.admins {
		if old, ok := admins[a.Name]; !ok || !reflect.DeepEqual(old, a) {
			must(t, e.UpdateAdminPolicy(a))
		}
		delete(admins, a.Name)
	}
	for n := range admins {
		e.DeleteAdminPolicy(n)
	}
	baselines := map[string]BaselinePolicy{}
	for _, b := range prev.baselines {
		baselines[b.Name] = b
	}
	for _, b := range w.baselines {
		if old, ok := baselines[b.Name]; !ok || !reflect.DeepEqual(old, b) {
			must(t, e.UpdateBaselinePolicy(b))
		}
		delete(baselines, b.Name)
	}
	for n := range baselines {
		e.DeleteBaselinePolicy(n)
	}
}

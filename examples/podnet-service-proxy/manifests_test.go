package main

import (
	"strings"
	"testing"
)

// TestReadManifests covers the document splitting: a leading separator,
// separators with comments, comment-only documents and a JSON List, and
// that an error names the file and the document.
func TestReadManifests(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "web.yaml", "---\n# header comment\n--- # the Service\n"+strings.Replace(webManifest, "---", "--- # the slice", 1)+"---\n# trailing\n")
	writeFile(t, dir, "dns.json", dnsManifest)
	o, err := readManifests(dir)
	if err != nil {
		t.Fatal(err)
	}
	svcs, err := o.toServices(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 2 || len(o.slices) != 2 {
		t.Fatalf("services %v, %d slices", svcs, len(o.slices))
	}
	for _, s := range svcs {
		if s.Name.Name == "web" && len(s.Endpoints) != 2 {
			t.Errorf("web endpoints %v", s.Endpoints)
		}
	}

	writeFile(t, dir, "web.yaml", webManifest+"---\napiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {bogus: 1}\n")
	if _, err := readManifests(dir); err == nil || !strings.Contains(err.Error(), "web.yaml: document 3: Service default/x") {
		t.Errorf("err %v", err)
	}
	writeFile(t, dir, "web.yaml", webManifest+"--- junk\n")
	if _, err := readManifests(dir); err == nil || !strings.Contains(err.Error(), "web.yaml: document 2:") {
		t.Errorf("err %v", err)
	}
}

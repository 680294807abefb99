package metrics

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestDocsListEveryMetric checks that docs/metrics.md names every metric
// the collectors export, and nothing they do not.
func TestDocsListEveryMetric(t *testing.T) {
	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	fq := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	names := map[string]bool{}
	for _, c := range []prometheus.Collector{
		NewServerCollector(&fakeServer{}, ServerOptions{PerUser: true}),
		NewClientCollector(&fakeClient{}),
	} {
		ch := make(chan *prometheus.Desc, 100)
		c.Describe(ch)
		close(ch)
		for d := range ch {
			m := fq.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("no name in %s", d)
			}
			names[m[1]] = true
		}
	}
	for n := range names {
		if !strings.Contains(string(doc), "`"+n+"`") {
			t.Errorf("docs/metrics.md does not list `%s`", n)
		}
	}
	for _, m := range regexp.MustCompile("`(roam_[a-z_]+)`").FindAllStringSubmatch(string(doc), -1) {
		if !names[m[1]] {
			t.Errorf("docs/metrics.md lists `%s`, which no collector exports", m[1])
		}
	}
}

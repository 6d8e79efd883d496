package statuspage

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Metric sums the values of the counter or gauge name in g's metrics, by
// the value of label (all under "" when label is empty): a service's
// collector reads its own counters (events published, messages handled)
// this way, the numbers /metrics shows.
func Metric(g prometheus.Gatherer, name, label string) map[string]float64 {
	out := map[string]float64{}
	mfs, err := g.Gather()
	if err != nil && len(mfs) == 0 {
		return out
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			k := ""
			if label != "" {
				k = labelValue(m, label)
			}
			switch {
			case m.GetCounter() != nil:
				out[k] += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[k] += m.GetGauge().GetValue()
			}
		}
	}
	return out
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// Package metrics exports a Roam server's or client's counters and status
// to Prometheus and serves them, with Kubernetes health probes, over HTTP.
//
// NewServerCollector and NewClientCollector read a *tunnel.Server or
// *tunnel.Client at scrape time: the atomic counters of Stats() as
// counters, and a Status() snapshot for gauges and the per-session RTT
// histogram. Nothing is sampled between scrapes, so a collector costs
// nothing while no one scrapes. Every metric is named roam_server_… or
// roam_client_…, with the unit as its suffix (_total, _bytes, _seconds);
// every drop counter is one sample of roam_{server,client}_dropped_packets_total
// with a reason label.
//
// Cardinality: no metric has a per-session or per-user label by default
// (a server with many users would create a time series per user). The
// opt-in ServerOptions.PerUser adds three gauges labeled by user name
// (or token ID for plain tokens); enable it only with a bounded set of
// users.
//
// Handler serves /metrics, /healthz (200 while the process runs) and
// /readyz (200 while the server listens or the client is connected, 503
// otherwise); Listen runs it on a TCP address until Close.
package metrics

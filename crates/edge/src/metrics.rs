//! `GET /__metrics`: the process and every server in the Prometheus exposition formats,
//! OpenMetrics 1.0 when the scraper asks for it (`Accept: application/openmetrics-text`), the
//! classic text format 0.0.4 otherwise.
//!
//! The figures are the manager's, read at scrape time: the request duration histograms the
//! request path records in per-thread shards ([`manager::metrics`]), the counters and states
//! of `/__serverz`, and the process's own resources from `/proc`. Names and labels follow the
//! OpenTelemetry HTTP semantic conventions as Prometheus renders them
//! (`http_server_request_duration_seconds{http_request_method, http_response_status_code,
//! http_route}`), with `server` naming the listener.
//!
//! Encoded with `prometheus-client`, the Prometheus project's own Rust client: it owns the
//! formats' details (escaping, `_total`, units, `# EOF`) while the data stays where it is
//! recorded cheaply; only a [`Collector`] is written here.

use http::StatusCode;
use http::header::{CONTENT_TYPE, HeaderValue};
use manager::{ManagerHandle, ProcessState, ServerState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::errors::Reply;

/// The OpenMetrics content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic text format's content type.
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// More metric families for `/__metrics` than the manager knows of (a program's flows, say):
/// attach one with [`ServerManager::extension`](manager::ServerManager::extension) and every
/// server's `/__metrics` encodes its collectors after the process's own.
#[derive(Debug, Default)]
pub struct ExtraMetrics(Vec<std::sync::Arc<dyn Collector>>);

impl ExtraMetrics {
    /// These collectors.
    pub fn new(collectors: Vec<std::sync::Arc<dyn Collector>>) -> Self {
        ExtraMetrics(collectors)
    }
}

/// One of [`ExtraMetrics`]' collectors, registered for one scrape.
#[derive(Debug)]
struct SharedCollector(std::sync::Arc<dyn Collector>);

impl Collector for SharedCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        self.0.encode(encoder)
    }
}

/// The `/__metrics` answer, in OpenMetrics when `accept` asks for it.
pub fn answer(manager: &ManagerHandle, accept: Option<&str>) -> Reply {
    let openmetrics = accept.is_some_and(|a| a.contains("application/openmetrics-text"));
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Process(manager.clone())));
    if let Some(extra) = manager.extension::<ExtraMetrics>() {
        for collector in &extra.0 {
            registry
                .register_collector(Box::new(SharedCollector(std::sync::Arc::clone(collector))));
        }
    }
    let mut text = String::with_capacity(16 * 1024);
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        return crate::errors::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        );
    }
    let (body, content_type) = if openmetrics {
        (text, OPENMETRICS)
    } else {
        (classic(&text), TEXT)
    };
    let mut reply = Reply::new(body.into());
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}

/// OpenMetrics text as the classic format reads it: no `# EOF` or `# UNIT` lines, and a
/// counter's `# TYPE`/`# HELP` under the name its samples carry (`..._total`).
fn classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_owned());
        }
    }
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# TYPE ", "# HELP "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Everything `/__metrics` shows, read from the manager at each scrape.
#[derive(Debug)]
struct Process(ManagerHandle);

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A metric whose samples are known at encode time.
struct Samples<F: Fn(&mut prometheus_client::encoding::MetricEncoder) -> std::fmt::Result>(
    MetricType,
    F,
);

impl<F> std::fmt::Debug for Samples<F>
where
    F: Fn(&mut prometheus_client::encoding::MetricEncoder) -> std::fmt::Result,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Samples")
    }
}

impl<F> EncodeMetric for Samples<F>
where
    F: Fn(&mut prometheus_client::encoding::MetricEncoder) -> std::fmt::Result,
{
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        (self.1)(&mut encoder)
    }
    fn metric_type(&self) -> MetricType {
        self.0
    }
}

/// One metric family: a descriptor, then `samples` writes each labelled sample (with
/// `encode_family(&labels)?.encode_counter(..)` and the like). For collectors of
/// [`ExtraMetrics`] too.
///
/// # Errors
/// When the encoder fails (writing to a `String` does not).
pub fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: impl Fn(&mut prometheus_client::encoding::MetricEncoder) -> std::fmt::Result,
) -> std::fmt::Result {
    let metric = Samples(kind, samples);
    let family = encoder.encode_descriptor(name, help, unit, kind)?;
    metric.encode(family)
}

/// A family of one unlabelled gauge.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl prometheus_client::encoding::EncodeGaugeValue,
) -> std::fmt::Result {
    family(encoder, name, help, unit, MetricType::Gauge, |e| {
        e.encode_gauge(&value)
    })
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let manager = &self.0;
        // The trackers only: `server_info` would merge every server's shards once more.
        let servers = manager.request_trackers();

        family(
            &mut encoder,
            "http_server_request_duration",
            "Duration of HTTP server requests (answered ones; aborted requests are counted by multi_server_requests_aborted).",
            Some(&Unit::Seconds),
            MetricType::Histogram,
            |e| {
                for (server, _, tracker) in &servers {
                    for (key, series) in tracker.http_metrics().snapshot() {
                        let mut status = itoa::Buffer::new();
                        let labels: Labels<'_> = vec![
                            ("server", server),
                            ("http_request_method", key.method),
                            ("http_response_status_code", status.format(key.status)),
                            ("http_route", key.route),
                        ];
                        let buckets = series.buckets();
                        e.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                            series.sum_seconds,
                            series.count,
                            &buckets,
                            None,
                        )?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            &mut encoder,
            "http_server_active_requests",
            "HTTP server requests in flight.",
            None,
            MetricType::Gauge,
            |e| {
                for (server, _, tracker) in &servers {
                    let labels: Labels<'_> = vec![("server", server)];
                    e.encode_family(&labels)?
                        .encode_gauge(&(tracker.in_flight() as u64))?;
                }
                Ok(())
            },
        )?;
        let counter = |encoder: &mut DescriptorEncoder,
                       name: &str,
                       help: &str,
                       value: &dyn Fn(&manager::requests::RequestTracker) -> u64|
         -> std::fmt::Result {
            family(encoder, name, help, None, MetricType::Counter, |e| {
                for (server, _, tracker) in &servers {
                    let labels: Labels<'_> = vec![("server", server)];
                    e.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&value(tracker), None)?;
                }
                Ok(())
            })
        };
        counter(
            &mut encoder,
            "multi_server_requests_aborted",
            "Requests that ended without an answer: the client went away, or the drain deadline cut them.",
            &|t| t.aborted(),
        )?;
        counter(
            &mut encoder,
            "multi_server_requests_cut",
            "Requests the drain deadline cut.",
            &|t| t.cut_by_deadline(),
        )?;
        family(
            &mut encoder,
            "multi_server_server_state",
            "Each server's state: 1 for the state it is in, 0 for the others.",
            None,
            MetricType::Gauge,
            |e| {
                for (server, state, _) in &servers {
                    for candidate in SERVER_STATES {
                        let name = state_name(candidate);
                        let labels: Labels<'_> = vec![("server", server), ("state", name)];
                        e.encode_family(&labels)?
                            .encode_gauge(&u64::from(*state == candidate))?;
                    }
                }
                Ok(())
            },
        )?;
        gauge(
            &mut encoder,
            "multi_server_uptime",
            "Time since the manager started.",
            Some(&Unit::Seconds),
            manager.health().uptime_seconds,
        )?;
        gauge(
            &mut encoder,
            "multi_server_ready",
            "1 while /__readyz answers 200.",
            None,
            f64::from(u8::from(manager.readiness().ready)),
        )?;
        gauge(
            &mut encoder,
            "multi_server_draining",
            "1 from the shutdown request on.",
            None,
            f64::from(u8::from(manager.process_state() == ProcessState::Draining)),
        )?;
        if let Some(dropped) = manager.log_lines_dropped() {
            family(
                &mut encoder,
                "multi_server_log_lines_dropped",
                "Log lines dropped rather than block on a stalled output.",
                None,
                MetricType::Counter,
                |e| e.encode_counter::<NoLabelSet, _, u64>(&dropped, None),
            )?;
        }
        let process = ProcFigures::read();
        if let Some(rss) = process.resident_bytes {
            gauge(
                &mut encoder,
                "process_resident_memory",
                "Resident memory size.",
                Some(&Unit::Bytes),
                rss,
            )?;
        }
        if let Some(fds) = process.open_fds {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors.",
                None,
                fds,
            )?;
        }
        if let Some(cpu) = process.cpu_seconds {
            family(
                &mut encoder,
                "process_cpu",
                "User and system CPU time spent.",
                Some(&Unit::Seconds),
                MetricType::Counter,
                |e| e.encode_counter::<NoLabelSet, _, f64>(&cpu, None),
            )?;
        }
        gauge(
            &mut encoder,
            "process_start_time",
            "Start time of the process since the Unix epoch.",
            Some(&Unit::Seconds),
            manager.started_at(),
        )?;
        Ok(())
    }
}

const SERVER_STATES: [ServerState; 6] = [
    ServerState::Pending,
    ServerState::Starting,
    ServerState::Serving,
    ServerState::Draining,
    ServerState::Stopped,
    ServerState::Failed,
];

fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Pending => "pending",
        ServerState::Starting => "starting",
        ServerState::Serving => "serving",
        ServerState::Draining => "draining",
        ServerState::Stopped => "stopped",
        ServerState::Failed => "failed",
    }
}

/// The process's own figures from `/proc/self` (Linux; absent elsewhere).
#[derive(Debug, Default)]
struct ProcFigures {
    resident_bytes: Option<u64>,
    open_fds: Option<u64>,
    cpu_seconds: Option<f64>,
}

impl ProcFigures {
    fn read() -> Self {
        // /proc/<pid>/stat counts clock ticks of USER_HZ, 100 on Linux whatever the kernel HZ.
        const USER_HZ: f64 = 100.0;
        // VmRSS in kB, whatever the page size (4 KiB, 16 KiB, 64 KiB kernels).
        let resident_bytes = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map(|kib| kib * 1024);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count().saturating_sub(1) as u64);
        let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| {
                // Fields after the command name (which may hold spaces, inside parentheses).
                let rest = stat.rsplit_once(')')?.1;
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let utime: f64 = fields.get(11)?.parse().ok()?;
                let stime: f64 = fields.get(12)?.parse().ok()?;
                Some((utime + stime) / USER_HZ)
            });
        ProcFigures {
            resident_bytes,
            open_fds,
            cpu_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::classic;

    #[test]
    fn the_classic_format_names_counters_by_their_samples_and_has_no_eof() {
        let openmetrics = "# HELP a Requests.\n# TYPE a counter\na_total 3\n\
                           # HELP b_seconds Time.\n# TYPE b_seconds gauge\n# UNIT b_seconds seconds\n\
                           b_seconds 1.5\n# EOF\n";
        assert_eq!(
            classic(openmetrics),
            "# HELP a_total Requests.\n# TYPE a_total counter\na_total 3\n\
             # HELP b_seconds Time.\n# TYPE b_seconds gauge\nb_seconds 1.5\n"
        );
    }
}

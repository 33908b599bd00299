//! The program's own `/__metrics` families, next to the process's: each flow's runs, errors
//! and durations, and the trace store's and export queue's budgets.

use std::sync::Arc;

use edge::metrics::family;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// The flows registry, as metric families.
#[derive(Debug)]
pub(crate) struct FlowMetrics(pub(crate) Arc<flows::Registry>);

impl Collector for FlowMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let registry = &self.0;
        let stats = registry.flow_stats();
        let per_flow = |encoder: &mut DescriptorEncoder,
                        name: &str,
                        help: &str,
                        count: fn(&flows::FlowStats) -> u64| {
            family(encoder, name, help, None, MetricType::Counter, |e| {
                for (flow, s) in &stats {
                    let labels = [("flow", flow.as_str())];
                    e.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&count(s), None)?;
                }
                Ok(())
            })
        };
        per_flow(
            &mut encoder,
            "multi_server_flow_runs",
            "Flow runs that ended, by flow (validation failures included).",
            |s| s.runs,
        )?;
        per_flow(
            &mut encoder,
            "multi_server_flow_errors",
            "Flow runs that ended with an error (cancelled ones included), by flow.",
            |s| s.errors,
        )?;
        family(
            &mut encoder,
            "multi_server_flow_duration",
            "Duration of flow runs, by flow.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
            |e| {
                for (flow, s) in &stats {
                    let labels = [("flow", flow.as_str())];
                    let buckets: Vec<(f64, u64)> = flows::FLOW_DURATION_BUCKETS
                        .iter()
                        .copied()
                        .chain([f64::INFINITY])
                        .zip(s.buckets)
                        .collect();
                    e.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                        s.duration_seconds,
                        s.runs,
                        &buckets,
                        None,
                    )?;
                }
                Ok(())
            },
        )?;
        let bytes = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: usize| {
            family(
                encoder,
                name,
                help,
                Some(&Unit::Bytes),
                MetricType::Gauge,
                |e| e.encode_gauge(&(value as u64)),
            )
        };
        bytes(
            &mut encoder,
            "multi_server_trace_store",
            "Bytes of the recent traces kept in memory (their strings plus a fixed cost per span and attribute; budget 8 MiB).",
            registry.trace_store_bytes(),
        )?;
        bytes(
            &mut encoder,
            "multi_server_telemetry_queue",
            "Trace JSON waiting to be exported (budget 4 MiB).",
            registry.telemetry_queued_bytes(),
        )?;
        family(
            &mut encoder,
            "multi_server_telemetry_dropped",
            "Trace posts dropped: queue over budget, telemetry server down or failing.",
            None,
            MetricType::Counter,
            |e| e.encode_counter::<NoLabelSet, _, u64>(&registry.telemetry_dropped(), None),
        )
    }
}

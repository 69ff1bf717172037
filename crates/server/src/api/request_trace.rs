//! OpenTelemetry traces, as vLLM's `--otlp-traces-endpoint` sends them: one `llm_request`
//! span (kind server) per engine request, from its arrival to its end, with vLLM's attributes
//! (`gen_ai.request.*`, `gen_ai.usage.*`, `gen_ai.latency.*`), a child of the trace the
//! incoming W3C `traceparent` names. Exported over OTLP/HTTP (protobuf) in batches from the
//! exporter's own thread; the request path only records.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use ferrolm_engine::sampling::SamplingParams;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

/// How often the exporter sends what it has (a span reaches the collector within this).
const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// The span exporter of a server run with `--otlp-traces-endpoint`.
pub struct Tracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Tracer {
    /// An OTLP/HTTP exporter to `endpoint`: a collector's base address (`http://host:4318`,
    /// to which `/v1/traces` is added) or the full traces URL. Call outside the async runtime
    /// (the HTTP client is a blocking one, run by the exporter's thread).
    pub fn otlp_http(endpoint: &str, service_name: &str) -> anyhow::Result<Self> {
        let url = traces_url(endpoint)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .build()
            .map_err(|e| anyhow::anyhow!("--otlp-traces-endpoint {endpoint}: {e}"))?;
        let batches = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(EXPORT_EVERY)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batches)
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_string())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("ferrolm");
        Ok(Self { provider, tracer })
    }

    /// Sends what is buffered and stops the exporter (at shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("OTLP trace exporter: {e}");
        }
    }
}

/// The collector's traces URL from `--otlp-traces-endpoint`.
fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let Some(rest) = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
    else {
        anyhow::bail!(
            "--otlp-traces-endpoint {endpoint}: an http:// or https:// URL of an OTLP/HTTP receiver (port 4318; gRPC is not supported)"
        );
    };
    Ok(match rest.split_once('/') {
        None | Some((_, "")) => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
        Some(_) => endpoint.to_string(),
    })
}

/// One HTTP request's trace: where its spans hang and what they say of the request.
pub struct RequestTrace {
    tracer: Arc<Tracer>,
    parent: Context,
    id: String,
    attributes: Vec<KeyValue>,
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

impl RequestTrace {
    /// `id`: the response's id; `n`: engine requests per prompt (choices).
    pub fn new(
        tracer: Arc<Tracer>,
        headers: &HeaderMap,
        id: &str,
        model: &str,
        params: &SamplingParams,
        n: usize,
    ) -> Self {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let attributes = vec![
            KeyValue::new("gen_ai.response.model", model.to_string()),
            KeyValue::new("gen_ai.request.max_tokens", params.max_tokens as i64),
            KeyValue::new("gen_ai.request.temperature", params.temperature as f64),
            KeyValue::new("gen_ai.request.top_p", params.top_p as f64),
            KeyValue::new("gen_ai.request.n", n as i64),
        ];
        Self {
            tracer,
            parent,
            id: id.to_string(),
            attributes,
        }
    }

    /// Records the span of engine request `index` (of `count`) once it has finished.
    pub fn record(&self, index: usize, count: usize, t: &FinishedTimings) {
        let id = if count > 1 {
            format!("{}-{index}", self.id)
        } else {
            self.id.clone()
        };
        let mut attributes = self.attributes.clone();
        attributes.extend([
            KeyValue::new("gen_ai.request.id", id),
            KeyValue::new("gen_ai.usage.prompt_tokens", t.prompt_tokens as i64),
            KeyValue::new("gen_ai.usage.completion_tokens", t.completion_tokens as i64),
            KeyValue::new("gen_ai.latency.e2e", t.e2e),
            KeyValue::new("gen_ai.response.finish_reason", t.finish_reason),
        ]);
        if let Some(q) = t.queue {
            attributes.push(KeyValue::new("gen_ai.latency.time_in_queue", q));
        }
        if let Some(ttft) = t.ttft {
            attributes.push(KeyValue::new("gen_ai.latency.time_to_first_token", ttft));
            // From leaving the queue to the first token; then the rest of the generation.
            let prefill = (ttft - t.queue.unwrap_or(0.0)).max(0.0);
            let decode = (t.e2e - ttft).max(0.0);
            attributes.extend([
                KeyValue::new("gen_ai.latency.time_in_model_prefill", prefill),
                KeyValue::new("gen_ai.latency.time_in_model_decode", decode),
                KeyValue::new("gen_ai.latency.time_in_model_inference", prefill + decode),
            ]);
        }
        let start = t.arrived;
        let end = start + Duration::from_secs_f64(t.e2e);
        let mut span = self
            .tracer
            .tracer
            .span_builder("llm_request")
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer.tracer, &self.parent);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, end);
    }
}

/// What a finished engine request's span reports (seconds).
pub struct FinishedTimings {
    pub arrived: SystemTime,
    pub queue: Option<f64>,
    pub ttft: Option<f64>,
    pub e2e: f64,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_adds_the_path_to_a_base_address_only() {
        assert_eq!(
            traces_url("http://c:4318").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://c/otlp/v1/traces").unwrap(),
            "https://c/otlp/v1/traces"
        );
        assert!(traces_url("c:4317").is_err());
        assert!(traces_url("grpc://c:4317").is_err());
    }
}

//! The flows this program registers: the original sample's `multi_server_flow`, one that
//! streams, and one with a structured input and nested steps, so every feature of the
//! registry is exercised by the CLI, the flows API and the Dev UI.

use std::sync::Arc;
use std::time::Duration;

use flows::schemars::{self, JsonSchema};
use flows::{FlowContext, FlowError, Registry};
use serde::{Deserialize, Serialize};

/// A registry with every flow of the program.
pub(crate) fn registry() -> Arc<Registry> {
    let registry = Registry::new();
    registry.define_flow(
        "multi_server_flow",
        "Greets by name, as the original Python sample's flow did.",
        |name: String, _ctx: FlowContext| async move {
            Ok::<_, FlowError>(format!("Hello from multi-server, {name}!"))
        },
    );
    registry.define_flow(
        "streaming_greeting",
        "Streams a greeting word by word (one chunk every interval), then returns it whole.",
        stream_greeting,
    );
    registry.define_flow(
        "plan_trip",
        "Plans a trip day by day from a structured request; each stage is a traced step.",
        plan_trip,
    );
    registry
}

/// Input of `streaming_greeting`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamInput {
    /// Who to greet.
    name: String,
    /// Milliseconds between chunks (0..=2000, default 100).
    #[serde(default = "default_interval")]
    interval_ms: u64,
}

fn default_interval() -> u64 {
    100
}

/// One streamed piece of the greeting.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct GreetingChunk {
    /// Position, from 0.
    index: usize,
    /// The word.
    text: String,
}

async fn stream_greeting(input: StreamInput, ctx: FlowContext) -> Result<String, FlowError> {
    if input.interval_ms > 2000 {
        return Err(FlowError::invalid_argument(format!(
            "interval_ms must be at most 2000, got {}",
            input.interval_ms
        )));
    }
    let greeting = format!(
        "Hello from multi-server, {}! Streaming, word by word.",
        input.name
    );
    for (index, word) in greeting.split(' ').enumerate() {
        if index > 0 {
            tokio::time::sleep(Duration::from_millis(input.interval_ms)).await;
        }
        ctx.send_chunk(GreetingChunk {
            index,
            text: word.to_owned(),
        })
        .await;
    }
    Ok(greeting)
}

/// Input of `plan_trip`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TripRequest {
    /// Where to.
    destination: String,
    /// How many days (1..=14).
    days: u8,
    /// Who is going (at least one name).
    travelers: Vec<String>,
    /// What the days should be like.
    #[serde(default)]
    pace: Pace,
}

/// How full each day is.
#[derive(Debug, Default, Clone, Copy, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Pace {
    /// One thing a day.
    Relaxed,
    /// Two things a day.
    #[default]
    Balanced,
    /// Three things a day.
    Packed,
}

/// Output of `plan_trip`.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct TripPlan {
    /// Where to.
    destination: String,
    /// Who is going.
    travelers: Vec<String>,
    /// One entry per day.
    itinerary: Vec<DayPlan>,
    /// One sentence about the whole trip.
    summary: String,
}

/// One day of a [`TripPlan`].
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct DayPlan {
    /// Day number, from 1.
    day: u8,
    /// What to do.
    activities: Vec<String>,
}

const ACTIVITIES: &[&str] = &[
    "walk the old town",
    "visit the main museum",
    "eat where the locals eat",
    "take the river boat",
    "climb to the viewpoint",
    "browse the market",
    "rest in a park",
];

async fn plan_trip(request: TripRequest, ctx: FlowContext) -> Result<TripPlan, FlowError> {
    let request = ctx
        .run("validate", async move {
            if !(1..=14).contains(&request.days) {
                return Err(FlowError::invalid_argument(format!(
                    "days must be from 1 to 14, got {}",
                    request.days
                )));
            }
            if request.travelers.iter().all(|t| t.trim().is_empty()) {
                return Err(FlowError::invalid_argument(
                    "travelers must name at least one person",
                ));
            }
            Ok(request)
        })
        .await?;
    let per_day = match request.pace {
        Pace::Relaxed => 1,
        Pace::Balanced => 2,
        Pace::Packed => 3,
    };
    let itinerary = ctx
        .run("plan_days", async {
            Ok((1..=request.days)
                .map(|day| DayPlan {
                    day,
                    activities: (0..per_day)
                        .map(|slot| {
                            let i = (usize::from(day) * 3 + slot) % ACTIVITIES.len();
                            ACTIVITIES[i].to_owned()
                        })
                        .collect(),
                })
                .collect::<Vec<_>>())
        })
        .await?;
    let summary = ctx
        .run("summarize", async {
            let pace = match request.pace {
                Pace::Relaxed => "relaxed",
                Pace::Balanced => "balanced",
                Pace::Packed => "packed",
            };
            Ok(format!(
                "{} day(s) in {} for {} at a {pace} pace.",
                request.days,
                request.destination,
                request.travelers.join(", "),
            ))
        })
        .await?;
    Ok(TripPlan {
        destination: request.destination,
        travelers: request.travelers,
        itinerary,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use flows::RunOptions;
    use serde_json::json;

    use super::*;

    async fn run(key: &str, input: serde_json::Value) -> Result<serde_json::Value, FlowError> {
        let run = registry().start(key, input, RunOptions::default())?;
        tokio::time::timeout(Duration::from_secs(10), run.result())
            .await
            .expect("bounded")
    }

    #[tokio::test]
    async fn multi_server_flow_greets_like_the_original() {
        let out = run("/flow/multi_server_flow", json!("Alice"))
            .await
            .unwrap();
        assert_eq!(out, "Hello from multi-server, Alice!");
    }

    #[tokio::test]
    async fn streaming_greeting_streams_every_word_in_order() {
        let registry = registry();
        let options = RunOptions {
            stream: true,
            ..RunOptions::default()
        };
        let mut run = registry
            .start(
                "/flow/streaming_greeting",
                json!({"name": "Bo", "interval_ms": 0}),
                options,
            )
            .unwrap();
        let mut words = Vec::new();
        while let Some(chunk) = run.next_chunk().await {
            assert_eq!(chunk["index"], words.len());
            words.push(chunk["text"].as_str().unwrap().to_owned());
        }
        let out = run.result().await.unwrap();
        assert_eq!(words.join(" "), out.as_str().unwrap());
        assert!(words.len() > 3);
    }

    #[tokio::test]
    async fn plan_trip_validates_and_plans() {
        let plan = run(
            "/flow/plan_trip",
            json!({"destination": "Lyon", "days": 2, "travelers": ["Ann"], "pace": "packed"}),
        )
        .await
        .unwrap();
        assert_eq!(plan["itinerary"].as_array().unwrap().len(), 2);
        assert_eq!(
            plan["itinerary"][0]["activities"].as_array().unwrap().len(),
            3
        );

        let err = run(
            "/flow/plan_trip",
            json!({"destination": "Lyon", "days": 0, "travelers": ["Ann"]}),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, flows::StatusCode::InvalidArgument);
        assert!(
            err.message.contains("days must be from 1 to 14"),
            "{}",
            err.message
        );

        let err = run(
            "/flow/plan_trip",
            json!({"destination": "Lyon", "days": "two", "travelers": []}),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, flows::StatusCode::InvalidArgument);
        assert!(err.message.contains("days"), "{}", err.message);
    }
}

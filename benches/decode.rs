//! Per-event cost of each stage a stream event goes through before silver, on the sample
//! blood-pressure readings (`samples/stream/observations.ndjson`), one core, side by side with the
//! two baselines: a plain `serde_json` parse (the floor any JSON ingest pays) and `fhirbolt`'s
//! catch-all `Resource` path (what the structural check cost before it quoted decimals).
//!
//! `cargo bench --bench decode`

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use vitalake::fhir::{DecodeOptions, Location, decode, structure};
use vitalake::ingest::silver::SilverViews;
use vitalake::ingest::stream::events::{EventDecoder, decode_event};
use vitalake::stream::Event;
use vitalake::validate::{Check, ProfileValidator, ValidateConfig};

/// The allocator of the `vitalake` binary: allocation is a large share of every stage.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 50_000;

/// Runs `stage` on `ROUNDS` readings (cycling through them) and prints µs per reading.
fn time(name: &str, readings: usize, mut stage: impl FnMut(usize)) {
    for i in 0..readings.min(1_000) {
        stage(i); // warm-up: caches, the allocator, the structural check's decimal paths
    }
    let started = Instant::now();
    for i in 0..ROUNDS {
        stage(i % readings);
    }
    let micros = started.elapsed().as_secs_f64() * 1e6 / ROUNDS as f64;
    println!("{name:<58} {micros:>7.2} µs/reading");
}

fn main() {
    let text = std::fs::read_to_string("samples/stream/observations.ndjson").unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(r#""code":"85354-9""#))
        .collect();
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let n = lines.len();
    let bytes = lines.iter().map(|l| l.len()).sum::<usize>() / n;
    println!("{n} blood-pressure readings of the stream sample, {bytes} bytes each on average\n");

    time("baseline: serde_json parse into Value", n, |i| {
        black_box(serde_json::from_str::<Value>(lines[i]).unwrap());
    });
    time("structural check (decimals quoted, typed path)", n, |i| {
        structure::check(lines[i], "Observation").unwrap();
    });
    time("baseline: fhirbolt catch-all Resource path", n, |i| {
        black_box(
            fhirbolt::json::from_str::<fhirbolt::model::r4::Resource>(lines[i], None).unwrap(),
        );
    });
    time("structural check again, after the catch-all path", n, |i| {
        structure::check(lines[i], "Observation").unwrap();
    });
    time("decode (head, Bundle entries, structural check)", n, |i| {
        let mut out = Vec::with_capacity(1);
        decode(
            lines[i],
            Location::line(1),
            &DecodeOptions::default(),
            &mut out,
        );
        black_box(out);
    });
    let validator = ProfileValidator::load(&ValidateConfig::default()).unwrap();
    time("profile validation walk (R4 bp profile)", n, |i| {
        black_box(validator.check("Observation", &parsed[i]));
    });
    let views = vitalake::views::load_dir(Path::new("profiles/views")).unwrap();
    let observation_views: Vec<_> = views
        .iter()
        .filter(|v| v.resource() == "Observation")
        .collect();
    // Side by side: the two Observation views silver had before the EHR views (issue 24), which
    // added lab_result and vital_sign: their `where` runs on every reading too.
    let vitals_only: Vec<_> = observation_views
        .iter()
        .filter(|v| matches!(v.name(), Some("blood_pressure" | "heart_rate")))
        .collect();
    time(
        "silver views (blood_pressure and heart_rate only)",
        n,
        |i| {
            for view in &vitals_only {
                black_box(view.rows(&parsed[i]).unwrap());
            }
        },
    );
    time(
        &format!(
            "silver views ({} Observation views)",
            observation_views.len()
        ),
        n,
        |i| {
            for view in &observation_views {
                black_box(view.rows(&parsed[i]).unwrap());
            }
        },
    );
    let checks: Vec<Arc<dyn Check>> = vec![Arc::new(validator)];
    let events: Vec<Event> = lines
        .iter()
        .map(|l| Event {
            partition_id: "0".into(),
            body: l.as_bytes().to_vec(),
            ..Event::default()
        })
        .collect();
    time(
        "decode_event: the stream's decode, parse and validation",
        n,
        |i| {
            black_box(decode_event(&events[i], &DecodeOptions::default(), &checks));
        },
    );
    let decoder = EventDecoder {
        options: DecodeOptions::default(),
        checks,
        views: SilverViews::load(Path::new("profiles/views")).unwrap(),
    };
    time(
        "the stream's decoder: decode_event, then the views ahead",
        n,
        |i| {
            black_box(decoder.decode(&events[i]));
        },
    );
}

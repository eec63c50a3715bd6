//! Renders `target/redkit-bench.json` (written by the other benches) as the Markdown table of
//! the README's "Performance" section: `cargo bench --bench report`. Prints nothing but a
//! note when no bench has run yet.

mod common;

use serde_json::Value;

fn cell(v: &Value, unit: &str) -> String {
    match v.as_f64() {
        Some(x) if unit == "us" => {
            if x.abs() >= 1000.0 {
                format!("{:.1} ms", x / 1000.0)
            } else {
                format!("{x:.0} µs")
            }
        }
        Some(x) if x >= 10_000.0 => format!("{:.0}k", x / 1000.0),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.3}"),
        None => "-".into(),
    }
}

fn main() {
    let path = common::json_path();
    let Some(doc) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        println!(
            "no results yet in {} (run `cargo bench` first)",
            path.display()
        );
        return;
    };
    let m = &doc["machine"];
    println!(
        "Measured on {} cores ({}), {}, redis-server {}, by `cargo bench` (every figure from one run of the harness; baselines measured in the same run).",
        m["cores"], m["cpu"].as_str().unwrap_or("?"), m["os"].as_str().unwrap_or("?"), m["redis_server"].as_str().unwrap_or("?")
    );
    println!();
    println!("| bench | scenario | redkit | baseline | ratio or added | target | met |");
    println!("|---|---|---|---|---|---|---|");
    let Some(benches) = doc["benches"].as_object() else {
        return;
    };
    for (bench, section) in benches {
        for row in section["rows"].as_array().into_iter().flatten() {
            let scenario = row["scenario"].as_str().unwrap_or("?");
            let target = row["target"].as_str().unwrap_or("-");
            let met = match row["met"].as_bool() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            };
            match row["kind"].as_str() {
                Some("throughput") => {
                    let unit = row["unit"].as_str().unwrap_or("");
                    println!(
                        "| {bench} | {scenario} | {}{unit} | {}{unit} | {:.3} | {target} | {met} |",
                        cell(&row["redkit"], ""),
                        cell(&row["baseline"], ""),
                        row["ratio"].as_f64().unwrap_or(f64::NAN)
                    );
                }
                Some("latency") => {
                    let added = match row["added_us"].as_f64() {
                        Some(a) if a < 0.0 => format!("-{}", cell(&Value::from(-a), "us")),
                        Some(a) => format!("+{}", cell(&Value::from(a), "us")),
                        None => "-".into(),
                    };
                    println!(
                        "| {bench} | {scenario} | {} | {} | {added} | {target} | {met} |",
                        cell(&row["redkit_us"], "us"),
                        cell(&row["baseline_us"], "us"),
                    );
                }
                _ => println!(
                    "| {bench} | {scenario} | {:.1} {} | - | - | - | - |",
                    row["value"].as_f64().unwrap_or(f64::NAN),
                    row["unit"].as_str().unwrap_or("")
                ),
            }
        }
    }
}

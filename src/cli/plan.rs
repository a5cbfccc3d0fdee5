//! Renders a pass report as a table or JSON, with the models and bytes it frees.

use std::io::Write;

use anyhow::Context;
use serde_json::json;

use crate::domain::ranking::rfc3339;
use crate::engine::{Engine, PassReport};
use crate::store::Usage;

/// Objects and bytes under every planned location, for a dry run's summary.
pub async fn measure(engine: &Engine, report: &PassReport) -> anyhow::Result<Usage> {
    let mut total = Usage::default();
    for (location, _) in report.planned.iter().flat_map(|p| &p.locations) {
        let usage = engine
            .store()
            .usage(&location.bucket, &location.prefix)
            .await
            .with_context(|| format!("measuring {location}"))?;
        total.objects += usage.objects;
        total.bytes += usage.bytes;
    }
    Ok(total)
}

/// Prints the report on stdout.
pub fn print(report: &PassReport, freed: &Usage, as_json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        let value = json!({
            "report": report,
            "freed": {"models": report.planned.len(), "objects": freed.objects, "bytes": freed.bytes},
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        write!(out, "{}", table(report, freed))?;
    }
    Ok(())
}

fn table(report: &PassReport, freed: &Usage) -> String {
    let mut rows = vec![[
        "RANK".to_string(),
        "RUN ID".into(),
        "RUN NAME".into(),
        report.policy.metric.to_uppercase(),
        "ENDED".into(),
        "DECISION".into(),
        "RULE".into(),
        "REASON".into(),
    ]];
    for r in &report.ranking.runs {
        rows.push([
            r.rank.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            r.run.run_id.clone(),
            r.run.run_name.clone(),
            r.run
                .metric
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            r.run.end_time.map(rfc3339).unwrap_or_else(|| "-".into()),
            r.decision.label().into(),
            serde_json::to_value(r.rule)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            r.reason.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut s = format!(
        "experiment {} — policy: {}{}\n",
        report.experiment_id,
        report.policy,
        if report.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        s.push_str(line.join("  ").trim_end());
        s.push('\n');
    }
    let verb = if report.dry_run {
        "would free"
    } else {
        "freed"
    };
    s.push_str(&format!(
        "{} ranked: {} keep, {} delete, {} protected, {} in grace, {} skipped; {verb} {} models, {} objects, {} bytes\n",
        report.ranking.ranked,
        report.ranking.count("keep"),
        report.ranking.count("delete"),
        report.ranking.count("protected"),
        report.ranking.count("grace"),
        report.ranking.count("skipped"),
        report.planned.len(),
        freed.objects,
        freed.bytes,
    ));
    for run in &report.unmarked {
        s.push_str(&format!(
            "run {}: files deleted, but MLflow refused the mark ({}); the next pass completes it\n",
            run.run_id, run.error
        ));
    }
    if let Some(until) = report.ranking.grace_ends() {
        s.push_str(&format!(
            "the first grace window ends at {}: a pass after that deletes what is still out of the top\n",
            rfc3339(until)
        ));
    }
    if let Some(at) = report.ranking.next_look()
        && report.ranking.grace_ends() != Some(at)
    {
        s.push_str(&format!(
            "the first run held back by older_than becomes a candidate at {}\n",
            rfc3339(at)
        ));
    }
    if !report.ranking.ungrouped.is_empty() {
        s.push_str(&format!(
            "ranked apart, without {}: {}\n",
            report
                .policy
                .group_by
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            report.ranking.ungrouped.join(", ")
        ));
    }
    if report.experiment_deleted {
        s.push_str("experiment deleted\n");
    }
    s
}

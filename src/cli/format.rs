//! How the command line writes for people: metric values rounded, byte counts in units,
//! counted nouns in the right number, progress on a terminal. `--json` keeps the raw values.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar on stderr when it is a terminal, nothing otherwise: `{done}/{total} {what}`,
/// the rate, the time left and the bar's message.
pub(super) fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let template = format!("{{bar:40}} {{pos}}/{{len}} {what} ({{per_sec}}, {{eta}} left) {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

/// A metric value to six significant digits, without trailing zeros (`0.09` for
/// `0.08999999999999997`); very large or small values in scientific notation.
pub(super) fn metric(value: f64) -> String {
    if !value.is_finite() || value == 0.0 {
        return value.to_string();
    }
    let magnitude = value.abs().log10().floor();
    if !(-4.0..15.0).contains(&magnitude) {
        return format!("{value:.5e}");
    }
    // Six significant digits: five after the first one.
    let decimals = (5.0 - magnitude).max(0.0) as usize;
    let fixed = format!("{value:.decimals$}");
    if fixed.contains('.') {
        fixed.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        fixed
    }
}

/// Rows as left-aligned columns two spaces apart, each line trimmed, with a newline each.
pub(super) fn columns<R: AsRef<[String]>>(rows: &[R]) -> String {
    let count = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..count)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.as_ref().get(i))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .as_ref()
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        s.push_str(cells.join("  ").trim_end());
        s.push('\n');
    }
    s
}

/// `1 model`, `2 models`: `noun` with an `s` unless `n` is one.
pub(super) fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_rounded_to_six_significant_digits() {
        assert_eq!(metric(0.08999999999999997), "0.09");
        assert_eq!(metric(0.912345678), "0.912346");
        assert_eq!(metric(-1.5), "-1.5");
        assert_eq!(metric(123456.789), "123457");
        assert_eq!(metric(2.0), "2");
        assert_eq!(metric(0.0), "0");
        assert_eq!(metric(0.00012345678), "0.000123457");
        assert_eq!(metric(1.5e-7), "1.50000e-7");
        assert_eq!(metric(3e20), "3.00000e20");
        assert_eq!(metric(f64::NAN), "NaN");
        assert_eq!(metric(f64::NEG_INFINITY), "-inf");
    }

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let rows = [
            vec!["A".to_owned(), "BB".to_owned(), "C".to_owned()],
            vec!["long".to_owned(), "x".to_owned(), String::new()],
        ];
        assert_eq!(columns(&rows), "A     BB  C\nlong  x\n");
    }

    #[test]
    fn counted_nouns_agree_with_their_number() {
        assert_eq!(count(0u32, "model"), "0 models");
        assert_eq!(count(1u32, "model"), "1 model");
        assert_eq!(count(2u64, "object"), "2 objects");
    }
}

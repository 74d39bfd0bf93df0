//! The metric names a PromQL expression reads (a rule's, or a Grafana panel's once its
//! variables are replaced), found by parsing it with promql-parser: function names, keywords,
//! label names and the labels of `by (...)` are never taken for metrics.
use std::collections::BTreeSet;

use promql_parser::{
    label::MatchOp,
    parser::{self, Expr, VectorSelector},
    util::{ExprVisitor, walk_expr},
};

/// Every metric name that `expr` selects, bare (`up`), with matchers (`up{job="x"}`), over a
/// range (`x[5m]`) or by `{__name__="x"}`.
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let ast = parser::parse(expr).map_err(|e| format!("{expr}: {e}"))?;
    let mut names = Names::default();
    walk_expr(&mut names, &ast)?;
    Ok(names.0)
}

#[derive(Default)]
struct Names(BTreeSet<String>);

impl Names {
    fn selector(&mut self, vs: &VectorSelector) {
        if let Some(name) = &vs.name {
            self.0.insert(name.clone());
        }
        let matchers = vs
            .matchers
            .matchers
            .iter()
            .chain(vs.matchers.or_matchers.iter().flatten());
        for m in matchers {
            if m.name == "__name__" && matches!(m.op, MatchOp::Equal) {
                self.0.insert(m.value.clone());
            }
        }
    }
}

impl ExprVisitor for Names {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        match expr {
            Expr::VectorSelector(vs) => self.selector(vs),
            Expr::MatrixSelector(ms) => self.selector(&ms.vs),
            _ => {}
        }
        Ok(true)
    }
}

/// A Grafana query as the PromQL Grafana sends: its range variables become durations and every
/// other `$variable` (`${variable}`, `[[variable]]`) the regex `.*` (in this dashboard they
/// stand only inside label matchers' strings).
pub fn from_grafana(query: &str) -> String {
    let mut out = query.to_string();
    for (var, value) in [
        ("$__rate_interval", "5m"),
        ("${__rate_interval}", "5m"),
        ("$__interval", "1m"),
        ("${__interval}", "1m"),
        ("$__range", "1h"),
        ("${__range}", "1h"),
    ] {
        out = out.replace(var, value);
    }
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find(['$', '[']) {
        result.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = if let Some(braced) = tail.strip_prefix("${") {
            braced.find('}').map(|e| e + 3)
        } else if let Some(bracketed) = tail.strip_prefix("[[") {
            bracketed.find("]]").map(|e| e + 4)
        } else if let Some(bare) = tail.strip_prefix('$') {
            let n = bare
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(bare.len());
            (n > 0).then_some(n + 1)
        } else {
            None
        };
        match end {
            Some(e) => {
                result.push_str(".*");
                rest = &tail[e..];
            }
            None => {
                result.push_str(&tail[..1]);
                rest = &tail[1..];
            }
        }
    }
    result.push_str(rest);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).unwrap().into_iter().collect()
    }

    #[test]
    fn finds_bare_braced_and_ranged_names() {
        assert_eq!(names("up"), ["up"]);
        assert_eq!(names(r#"up{job="observer"} == 0"#), ["up"]);
        assert_eq!(
            names("increase(observer_events_dropped_total[10m]) > 0"),
            ["observer_events_dropped_total"]
        );
        assert_eq!(
            names(r#"{__name__="process_open_fds"}"#),
            ["process_open_fds"]
        );
    }

    #[test]
    fn skips_functions_keywords_labels_and_grouping() {
        let expr = r#"
            histogram_quantile(0.99,
              sum by (direction, port, le) (
                rate(observer_tcp_connection_duration_seconds_bucket{state!="x", port=~"80|443"}[5m])
              ))
            / ignoring (state) group_left (version) observer_build_info
            and on (instance) absent(nothing_here offset 5m)
            or vector(1) unless count without (reason) (observer_kernel_errors_total) > bool 0"#;
        assert_eq!(
            names(expr),
            [
                "nothing_here",
                "observer_build_info",
                "observer_kernel_errors_total",
                "observer_tcp_connection_duration_seconds_bucket",
            ]
        );
    }

    #[test]
    fn a_name_inside_a_string_or_a_comment_is_not_a_metric() {
        assert_eq!(
            names("label_replace(up, \"dst\", \"$1\", \"src\", \"not_a_metric\") # nor_this"),
            ["up"]
        );
    }

    #[test]
    fn recording_rule_names_with_colons_are_names() {
        assert_eq!(
            names("histogram_quantile(0.99, direction_port_le:x_bucket:rate5m)"),
            ["direction_port_le:x_bucket:rate5m"]
        );
    }

    #[test]
    fn bad_promql_is_an_error() {
        assert!(metric_names("sum by (port (x)").is_err());
        assert!(metric_names("rate(x[$__rate_interval])").is_err());
    }

    #[test]
    fn grafana_variables_become_promql() {
        let q = r#"sum by (le) (rate(x_bucket{job=~"$job", instance=~"${instance}", port=~"[[port]]"}[$__rate_interval]))"#;
        let promql = from_grafana(q);
        assert_eq!(
            promql,
            r#"sum by (le) (rate(x_bucket{job=~".*", instance=~".*", port=~".*"}[5m]))"#
        );
        assert_eq!(names(&promql), ["x_bucket"]);
        // Brackets and dollars that are not variables are kept.
        assert_eq!(from_grafana("x[5m] $ 1"), "x[5m] $ 1");
    }
}

//! PromQL query templates batched across clusters: which templates one query can answer for many
//! clusters (a deliberately conservative reading of the query), and that one query.
//!
//! A template such as `sum(rate(cpu{namespace="${namespace}"}[1m])) by (pod)` is batched by
//! widening each placeholder matcher to a regex over the clusters' values
//! (`namespace=~"shop|pay"`) and adding the placeholder labels to every `by (...)`
//! (`by (pod, namespace)`), so each answer series carries the values that say which cluster it
//! belongs to. That is only the same as querying each cluster alone when nothing in the query
//! can combine series of two clusters; anything this reader is not sure of is refused with the
//! reason, and such a template is queried once per cluster as before.

use std::collections::BTreeSet;

/// Aggregations whose `by (...)` can be extended: each group is computed on its own, so adding
/// the placeholder labels to the grouping splits every per-cluster group into exactly the groups
/// of each cluster. (`count_values` writes a label and `limitk` picks arbitrary series: refused.)
const AGGREGATIONS: &[&str] = &[
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "quantile", "topk", "bottomk",
];

/// Functions that work on each series by itself and keep its labels (`histogram_quantile` drops
/// only `le`), so they never combine two clusters' series. Anything else (`absent`, `scalar`,
/// `vector`, `label_replace`, MetricsQL extensions...) is refused.
const PER_SERIES_FUNCTIONS: &[&str] = &[
    "abs",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count_over_time",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_quantile",
    "idelta",
    "increase",
    "irate",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max_over_time",
    "min_over_time",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "timestamp",
];

/// Keywords that are neither functions nor series selectors.
const KEYWORDS: &[&str] = &[
    "offset", "bool", "and", "or", "unless", "atan2", "inf", "nan",
];

/// A label that tells clusters apart, and the placeholder that fills it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchKey {
    /// The series label, e.g. `namespace`.
    pub label: String,
    /// The placeholder name, e.g. `namespace` for `${namespace}`.
    pub placeholder: String,
}

/// A template one query can answer for many clusters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchTemplate {
    template: String,
    keys: Vec<BatchKey>,
    /// Where the batched query differs from the template, in template order.
    edits: Vec<Edit>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Edit {
    /// `template[start..end]` is `LABEL="${placeholder}"`: becomes `LABEL=~"v1|v2"`.
    Matcher {
        start: usize,
        end: usize,
        key: usize,
    },
    /// Before `template[at]` (the `)` closing a `by (...)` list) go these keys' labels.
    Grouping {
        at: usize,
        keys: Vec<usize>,
        comma: bool,
    },
}

/// Whether a placeholder's value can go into a batched query as is: it must read the same inside
/// a PromQL string as it was written into the per-cluster query (no quotes, no backslashes, no
/// control characters), or the two queries would not select the same series.
pub fn batchable_value(value: &str) -> bool {
    !value
        .chars()
        .any(|c| matches!(c, '"' | '\'' | '`' | '\\') || c.is_control())
}

/// Escapes `value` for a RE2 regex (PromQL's `=~`, fully anchored), so `a.b` matches only `a.b`.
pub fn regex_escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Escapes `text` for a double-quoted PromQL string.
fn string_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The bytes `text` takes in a URL query once form-encoded (as `reqwest` encodes it): letters,
/// digits and `*-._` stay, a space is `+`, every other byte is `%XX`.
pub fn form_encoded_len(text: &str) -> usize {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"*-._ ".contains(&byte) {
                1
            } else {
                3
            }
        })
        .sum()
}

impl BatchTemplate {
    /// The labels that tell clusters apart, in the order of their first matcher.
    pub fn keys(&self) -> &[BatchKey] {
        &self.keys
    }

    /// The template as written.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// The template filled for one cluster (`values[k]` for key `k`): what the per-cluster
    /// rendering gives, so a cluster whose query differs is not batched.
    pub fn fill(&self, values: &[&str]) -> String {
        // One pass, so that a value holding `${...}` is not filled again.
        let mut filled = String::with_capacity(self.template.len() + 32);
        let mut rest = self.template.as_str();
        while let Some(start) = rest.find("${") {
            filled.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else { break };
            let value = self
                .keys
                .iter()
                .zip(values)
                .find(|(key, _)| key.placeholder == after[..end])
                .map(|(_, value)| *value);
            match value {
                Some(value) => filled.push_str(value),
                None => filled.push_str(&rest[start..start + end + 3]),
            }
            rest = &after[end + 1..];
        }
        filled.push_str(rest);
        filled
    }

    /// The one query for clusters whose values of key `k` are `values[k]`.
    pub fn render(&self, values: &[BTreeSet<&str>]) -> String {
        let mut query = String::with_capacity(self.template.len() + 64);
        let mut done = 0;
        for edit in &self.edits {
            match edit {
                Edit::Matcher { start, end, key } => {
                    query.push_str(&self.template[done..*start]);
                    let alternatives: Vec<String> = values
                        .get(*key)
                        .into_iter()
                        .flatten()
                        .map(|value| regex_escape(value))
                        .collect();
                    query.push_str(&self.keys[*key].label);
                    query.push_str("=~\"");
                    query.push_str(&string_escape(&alternatives.join("|")));
                    query.push('"');
                    done = *end;
                }
                Edit::Grouping { at, keys, comma } => {
                    query.push_str(&self.template[done..*at]);
                    for (index, key) in keys.iter().enumerate() {
                        if index > 0 || *comma {
                            query.push_str(", ");
                        }
                        query.push_str(&self.keys[*key].label);
                    }
                    done = *at;
                }
            }
        }
        query.push_str(&self.template[done..]);
        query
    }

    /// How many matchers of `key` the query has (each repeats the key's alternatives).
    pub fn matcher_count(&self, key: usize) -> usize {
        self.edits
            .iter()
            .filter(|edit| matches!(edit, Edit::Matcher { key: k, .. } if *k == key))
            .count()
    }

    /// The form-encoded bytes one alternative `value` adds to each matcher of its key (without
    /// the `|` between alternatives, which is [`SEPARATOR_ENCODED_LEN`]).
    pub fn encoded_value_len(value: &str) -> usize {
        form_encoded_len(&string_escape(&regex_escape(value)))
    }
}

/// Form-encoded bytes of the `|` between two alternatives.
pub const SEPARATOR_ENCODED_LEN: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ident,
    Number,
    Str,
    Punct,
    Placeholder,
}

#[derive(Clone, Copy, Debug)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

/// Splits PromQL into tokens (comments and whitespace dropped); `${name}` outside a string is a
/// token of its own so that it can be refused.
fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let kind = match c {
            _ if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'#' => {
                i = text[i..]
                    .find('\n')
                    .map_or(bytes.len(), |offset| i + offset);
                continue;
            }
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                let close = text[i..]
                    .find('}')
                    .ok_or_else(|| "an unclosed ${ placeholder".to_string())?;
                i += close + 1;
                Kind::Placeholder
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
                {
                    i += 1;
                }
                Kind::Ident
            }
            _ if c.is_ascii_digit()
                || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                i += 1;
                while i < bytes.len() {
                    let here = bytes[i];
                    let exponent_sign = matches!(here, b'+' | b'-')
                        && matches!(bytes[i - 1], b'e' | b'E')
                        && !text[start..i].starts_with("0x");
                    if here.is_ascii_alphanumeric() || here == b'_' || here == b'.' || exponent_sign
                    {
                        i += 1;
                    } else {
                        break;
                    }
                }
                Kind::Number
            }
            b'"' | b'\'' => {
                i += 1;
                loop {
                    match bytes.get(i) {
                        None | Some(b'\n') => return Err("an unterminated string".into()),
                        Some(b'\\') => i += 2,
                        Some(&quote) if quote == c => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                Kind::Str
            }
            b'`' => {
                let close = text[i + 1..]
                    .find('`')
                    .ok_or_else(|| "an unterminated string".to_string())?;
                i += close + 2;
                Kind::Str
            }
            _ => {
                let two = text.get(i..i + 2).unwrap_or("");
                if ["=~", "!~", "!=", "==", "<=", ">="].contains(&two) {
                    i += 2;
                } else if "(){}[],=<>+-*/%^@:".contains(c as char) {
                    i += 1;
                } else {
                    let found = text[i..].chars().next().unwrap_or('?');
                    return Err(format!("an unexpected character {found:?}"));
                }
                Kind::Punct
            }
        };
        tokens.push(Token {
            kind,
            start,
            end: i,
        });
    }
    Ok(tokens)
}

/// One series selector: its name (for messages) and the placeholder labels it matches.
struct Selector {
    name: String,
    labels: Vec<String>,
}

/// Reads `template` and says how to batch it, or why it cannot be batched safely (one phrase,
/// e.g. `an aggregation (sum) without by (...)`). `join_label` is the label series are joined to
/// endpoints by: a placeholder on it would split nothing.
pub fn analyze(template: &str, join_label: &str) -> Result<BatchTemplate, String> {
    let tokens = tokenize(template)?;
    let text = |token: &Token| &template[token.start..token.end];
    let is = |index: usize, punct: &str| {
        tokens
            .get(index)
            .is_some_and(|token| token.kind == Kind::Punct && text(token) == punct)
    };
    let word = |index: usize| {
        tokens
            .get(index)
            .filter(|token| token.kind == Kind::Ident)
            .map(|token| text(token).to_ascii_lowercase())
    };

    // The bracket partner of every opening and closing bracket.
    let mut partner = vec![usize::MAX; tokens.len()];
    let mut open: Vec<usize> = Vec::new();
    for (index, token) in tokens.iter().enumerate() {
        if token.kind != Kind::Punct {
            continue;
        }
        let closing = match text(token) {
            "(" | "[" | "{" => {
                open.push(index);
                continue;
            }
            ")" => "(",
            "]" => "[",
            "}" => "{",
            _ => continue,
        };
        match open.pop() {
            Some(opening) if text(&tokens[opening]) == closing => {
                partner[opening] = index;
                partner[index] = opening;
            }
            _ => return Err("unbalanced brackets".into()),
        }
    }
    if !open.is_empty() {
        return Err("unbalanced brackets".into());
    }

    if let Some(placeholder) = tokens.iter().find(|token| token.kind == Kind::Placeholder) {
        return Err(format!(
            "the placeholder {} is outside a LABEL=\"${{...}}\" matcher",
            text(placeholder)
        ));
    }

    // Label lists (`by (...)` and the like) hold label names, not series selectors.
    let mut in_label_list = vec![false; tokens.len()];
    for index in 0..tokens.len() {
        let Some(keyword) = word(index) else { continue };
        match keyword.as_str() {
            "on" | "ignoring" | "group_left" | "group_right" => {
                return Err(format!(
                    "vector matching with {keyword}(...) can pair series of different clusters"
                ));
            }
            "without" => {
                return Err(
                    "an aggregation with without (...): the labels it keeps are not known".into(),
                )
            }
            "by" if is(index + 1, "(") => {
                for flag in &mut in_label_list[index + 2..partner[index + 1]] {
                    *flag = true;
                }
            }
            _ => {}
        }
    }

    let mut keys: Vec<BatchKey> = Vec::new();
    let mut edits = Vec::new();
    // (position of the closing parenthesis, labels already there, whether a comma is needed)
    let mut groupings: Vec<(usize, Vec<String>, bool)> = Vec::new();
    let mut selectors: Vec<Selector> = Vec::new();
    let mut index = 0;
    while index < tokens.len() {
        let token = &tokens[index];
        if in_label_list[index] {
            index += 1;
            continue;
        }
        match token.kind {
            Kind::Str if text(token).contains("${") => {
                return Err(format!(
                    "the placeholder in the string {} is outside a LABEL=\"${{...}}\" matcher",
                    text(token)
                ))
            }
            Kind::Ident => {
                let name = text(token);
                let lower = name.to_ascii_lowercase();
                let called = is(index + 1, "(") || word(index + 1).is_some_and(|w| w == "by");
                if lower == "by" || KEYWORDS.contains(&lower.as_str()) {
                    // Its label list is skipped; keywords need nothing.
                } else if called && AGGREGATIONS.contains(&lower.as_str()) {
                    groupings.push(grouping(index, &tokens, template, &partner, &lower)?);
                } else if called && (name == "label_replace" || name == "label_join") {
                    return Err(format!(
                        "{name}() can rewrite the labels that tell clusters apart"
                    ));
                } else if called && PER_SERIES_FUNCTIONS.contains(&name) {
                    // Per series: nothing to do.
                } else if called {
                    return Err(format!(
                        "{name}() is not known to keep the clusters' series apart"
                    ));
                } else if !is(index + 1, "{") {
                    // A bare metric name: a selector without matchers.
                    selectors.push(Selector {
                        name: name.to_string(),
                        labels: Vec::new(),
                    });
                }
            }
            Kind::Punct if text(token) == "{" => {
                let close = partner[index];
                let name = match index.checked_sub(1).map(|previous| &tokens[previous]) {
                    Some(previous) if previous.kind == Kind::Ident => text(previous).to_string(),
                    _ => "{...}".to_string(),
                };
                let mut selector = Selector {
                    name,
                    labels: Vec::new(),
                };
                let mut at = index + 1;
                while at < close {
                    let (Some(label), Some(op), Some(value)) =
                        (tokens.get(at), tokens.get(at + 1), tokens.get(at + 2))
                    else {
                        return Err("a label matcher that cannot be read".into());
                    };
                    if label.kind != Kind::Ident
                        || op.kind != Kind::Punct
                        || !["=", "!=", "=~", "!~"].contains(&text(op))
                        || value.kind != Kind::Str
                        || at + 2 >= close
                    {
                        return Err(format!(
                            "a label matcher that cannot be read in {}{{...}}",
                            selector.name
                        ));
                    }
                    let quoted = text(value);
                    if quoted.contains("${") {
                        let inner = &quoted[1..quoted.len() - 1];
                        let placeholder = inner
                            .strip_prefix("${")
                            .and_then(|rest| rest.strip_suffix('}'))
                            .filter(|name| {
                                !name.is_empty()
                                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                            });
                        let whole = text(op) == "=" && !quoted.starts_with('`');
                        let Some(placeholder) = placeholder.filter(|_| whole) else {
                            return Err(format!(
                                "the placeholder in {}{}{} is not a whole LABEL=\"${{...}}\" value",
                                text(label),
                                text(op),
                                quoted
                            ));
                        };
                        let key = key_index(&mut keys, text(label), placeholder)?;
                        edits.push(Edit::Matcher {
                            start: label.start,
                            end: value.end,
                            key,
                        });
                        selector.labels.push(text(label).to_string());
                    }
                    at += 3;
                    if is(at, ",") {
                        at += 1;
                    } else if at != close {
                        return Err(format!(
                            "a label matcher that cannot be read in {}{{...}}",
                            selector.name
                        ));
                    }
                }
                selectors.push(selector);
                index = close;
            }
            Kind::Punct if text(token) == "[" => {
                let close = partner[index];
                let durations = tokens[index + 1..close]
                    .iter()
                    .all(|inner| inner.kind == Kind::Number || text(inner) == ":");
                if !durations {
                    return Err("a range [...] that cannot be read".into());
                }
                index = close;
            }
            _ => {}
        }
        index += 1;
    }

    for key in &keys {
        if key.label == join_label {
            return Err(format!(
                "the placeholder label {} is also the join label",
                key.label
            ));
        }
        if key.label.starts_with("__") {
            return Err(format!(
                "the placeholder label {} is internal to PromQL",
                key.label
            ));
        }
        if let Some(selector) = selectors
            .iter()
            .find(|selector| !selector.labels.contains(&key.label))
        {
            return Err(format!(
                "the selector {} has no {}=\"${{{}}}\" matcher, so its series are not told apart per cluster",
                selector.name, key.label, key.placeholder
            ));
        }
    }
    for (at, present, comma) in groupings {
        let missing: Vec<usize> = (0..keys.len())
            .filter(|key| !present.contains(&keys[*key].label))
            .collect();
        if !missing.is_empty() {
            edits.push(Edit::Grouping {
                at,
                keys: missing,
                comma,
            });
        }
    }
    edits.sort_by_key(|edit| match edit {
        Edit::Matcher { start, .. } => *start,
        Edit::Grouping { at, .. } => *at,
    });
    Ok(BatchTemplate {
        template: template.to_string(),
        keys,
        edits,
    })
}

/// The key of `label` filled by `placeholder`, added when new; one label per placeholder and one
/// placeholder per label, or the split would be ambiguous.
fn key_index(keys: &mut Vec<BatchKey>, label: &str, placeholder: &str) -> Result<usize, String> {
    for (index, key) in keys.iter().enumerate() {
        match (key.label == label, key.placeholder == placeholder) {
            (true, true) => return Ok(index),
            (true, false) => {
                return Err(format!(
                    "the label {label} is matched against both ${{{}}} and ${{{placeholder}}}",
                    key.placeholder
                ))
            }
            (false, true) => {
                return Err(format!(
                    "${{{placeholder}}} fills two labels ({} and {label})",
                    key.label
                ))
            }
            (false, false) => {}
        }
    }
    keys.push(BatchKey {
        label: label.to_string(),
        placeholder: placeholder.to_string(),
    });
    Ok(keys.len() - 1)
}

/// The `by (...)` list of the aggregation at `index`: where it closes, the labels in it, and
/// whether an added label needs a comma before it.
fn grouping(
    index: usize,
    tokens: &[Token],
    template: &str,
    partner: &[usize],
    name: &str,
) -> Result<(usize, Vec<String>, bool), String> {
    let text = |token: &Token| &template[token.start..token.end];
    let is_by = |at: usize| {
        tokens.get(at).is_some_and(|token| {
            token.kind == Kind::Ident && text(token).eq_ignore_ascii_case("by")
        })
    };
    let is_open = |at: usize| {
        tokens
            .get(at)
            .is_some_and(|token| token.kind == Kind::Punct && text(token) == "(")
    };
    // `sum by (pod) (...)` or `sum(...) by (pod)`.
    let list = if is_by(index + 1) && is_open(index + 2) && is_open(partner[index + 2] + 1) {
        index + 2
    } else if is_open(index + 1) && is_by(partner[index + 1] + 1) && is_open(partner[index + 1] + 2)
    {
        partner[index + 1] + 2
    } else {
        return Err(format!(
            "an aggregation ({name}) without by (...): its answer cannot be split per cluster"
        ));
    };
    let close = partner[list];
    let mut labels = Vec::new();
    for token in &tokens[list + 1..close] {
        match (token.kind, text(token)) {
            (Kind::Ident, label) => labels.push(label.to_string()),
            (Kind::Punct, ",") => {}
            _ => return Err(format!("a by (...) list of {name} that cannot be read")),
        }
    }
    let trailing_comma = close > list + 1 && text(&tokens[close - 1]) == ",";
    let comma = !labels.is_empty() && !trailing_comma;
    Ok((tokens[close].start, labels, comma))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set<'a>(values: &[&'a str]) -> BTreeSet<&'a str> {
        values.iter().copied().collect()
    }

    fn batched(template: &str, values: &[&[&str]]) -> String {
        let plan = analyze(template, "pod").expect("batchable");
        let sets: Vec<BTreeSet<&str>> = values.iter().map(|values| set(values)).collect();
        plan.render(&sets)
    }

    #[test]
    fn the_default_cpu_query_is_widened_and_grouped_by_its_placeholder_labels() {
        let plan = analyze(super::super::metrics::DEFAULT_CPU_QUERY, "pod").expect("batchable");
        assert_eq!(
            plan.keys(),
            &[
                BatchKey {
                    label: "namespace".into(),
                    placeholder: "namespace".into()
                },
                BatchKey {
                    label: "container".into(),
                    placeholder: "container".into()
                }
            ]
        );
        assert_eq!(
            plan.render(&[set(&["shop", "pay"]), set(&["web"])]),
            r#"sum(rate(container_cpu_usage_seconds_total{namespace=~"pay|shop",container=~"web"}[1m])) by (pod, namespace, container)"#
        );
        assert_eq!(
            plan.fill(&["shop", "web"]),
            r#"sum(rate(container_cpu_usage_seconds_total{namespace="shop",container="web"}[1m])) by (pod)"#
        );
    }

    #[test]
    fn both_by_clause_forms_and_every_aggregation_are_extended() {
        assert_eq!(
            batched(
                r#"sum by (pod) (rate(x{namespace="${namespace}"}[1m]))"#,
                &[&["a", "b"]]
            ),
            r#"sum by (pod, namespace) (rate(x{namespace=~"a|b"}[1m]))"#
        );
        assert_eq!(
            batched(
                r#"max by (pod) (sum by (pod, container) (rate(x{namespace="${namespace}"}[1m])))"#,
                &[&["a"]]
            ),
            r#"max by (pod, namespace) (sum by (pod, container, namespace) (rate(x{namespace=~"a"}[1m])))"#
        );
        // A ratio of two aggregations: both sides carry the matcher, both groupings are extended.
        assert_eq!(
            batched(
                r#"sum(rate(t_sum{namespace="${namespace}"}[1m])) by (pod) / sum(rate(t_count{namespace="${namespace}"}[1m])) by (pod)"#,
                &[&["a", "b"]]
            ),
            r#"sum(rate(t_sum{namespace=~"a|b"}[1m])) by (pod, namespace) / sum(rate(t_count{namespace=~"a|b"}[1m])) by (pod, namespace)"#
        );
        // Already grouped by the placeholder label; case-insensitive keywords; a trailing comma.
        assert_eq!(
            batched(
                r#"SUM BY (pod, namespace) (x{namespace="${namespace}"})"#,
                &[&["a"]]
            ),
            r#"SUM BY (pod, namespace) (x{namespace=~"a"})"#
        );
        assert_eq!(
            batched(r#"sum by (pod,) (x{namespace="${namespace}"})"#, &[&["a"]]),
            r#"sum by (pod,namespace) (x{namespace=~"a"})"#
        );
        assert_eq!(
            batched(r#"sum by () (x{namespace="${namespace}"})"#, &[&["a"]]),
            r#"sum by (namespace) (x{namespace=~"a"})"#
        );
        // Parameters, subqueries, offsets, comparisons and comments pass through.
        assert_eq!(
            batched(
                "topk(3, max_over_time(rate(x{namespace='${namespace}'}[1m])[5m:30s] offset 1m)) by (pod) > 0.5 # hot pods",
                &[&["a"]]
            ),
            r#"topk(3, max_over_time(rate(x{namespace=~"a"}[1m])[5m:30s] offset 1m)) by (pod, namespace) > 0.5 # hot pods"#
        );
        assert_eq!(
            batched(
                r#"histogram_quantile(0.99, sum by (le, pod) (rate(h_bucket{namespace="${namespace}",code!~"5.."}[1m])))"#,
                &[&["a"]]
            ),
            r#"histogram_quantile(0.99, sum by (le, pod, namespace) (rate(h_bucket{namespace=~"a",code!~"5.."}[1m])))"#
        );
    }

    #[test]
    fn values_are_regex_escaped_then_string_escaped() {
        assert_eq!(
            batched(
                r#"sum(x{cluster_name="${cluster}"}) by (pod)"#,
                &[&["a.b", "outbound|80||c.d.svc", "x+(y)"]]
            ),
            r#"sum(x{cluster_name=~"a\\.b|outbound\\|80\\|\\|c\\.d\\.svc|x\\+\\(y\\)"}) by (pod, cluster_name)"#
        );
        assert_eq!(regex_escape("a.b*c"), r"a\.b\*c");
        assert!(batchable_value("outbound|80||a.b.svc.cluster.local"));
        assert!(!batchable_value("a\"b"));
        assert!(!batchable_value("a\\b"));
        assert!(!batchable_value("a\nb"));
        // a\\.b in the query string, form-encoded a%5C%5C.b
        assert_eq!(BatchTemplate::encoded_value_len("a.b"), 9);
    }

    #[test]
    fn templates_without_placeholders_are_one_query_for_everyone() {
        let plan = analyze("sum(rate(x[1m])) by (pod)", "pod").expect("batchable");
        assert!(plan.keys().is_empty());
        assert_eq!(plan.render(&[]), "sum(rate(x[1m])) by (pod)");
    }

    #[test]
    fn what_cannot_be_batched_safely_says_why() {
        let refused = |template: &str, because: &str| {
            let reason = analyze(template, "pod").expect_err(template);
            assert!(
                reason.contains(because),
                "{template}: {reason:?} should say {because:?}"
            );
        };
        refused(
            r#"sum(x{namespace="ns-${namespace}"}) by (pod)"#,
            "not a whole",
        );
        refused(
            r#"sum(x{namespace=~"${namespace}"}) by (pod)"#,
            "not a whole",
        );
        refused(
            r#"sum(x{namespace!="${namespace}"}) by (pod)"#,
            "not a whole",
        );
        refused(
            r#"sum(rate(x{namespace="${namespace}"}[${window}])) by (pod)"#,
            "outside",
        );
        refused(
            r#"sum(x{namespace="${namespace}"}) by (pod) / on(pod) group_left sum(y{namespace="${namespace}"}) by (pod)"#,
            "on(...)",
        );
        refused(
            r#"sum(x{namespace="${namespace}"}) by (pod) / ignoring(code) sum(y{namespace="${namespace}"}) by (pod)"#,
            "ignoring(...)",
        );
        refused(
            r#"x{namespace="${namespace}"} * group_right y{namespace="${namespace}"}"#,
            "group_right",
        );
        refused(
            r#"sum without (container) (x{namespace="${namespace}"})"#,
            "without",
        );
        refused(
            r#"label_replace(x{namespace="${namespace}"}, "pod", "$1", "p", "(.*)")"#,
            "label_replace",
        );
        refused(
            r#"label_join(x{namespace="${namespace}"}, "pod", "-", "a", "b")"#,
            "label_join",
        );
        refused(r#"sum(x{namespace="${namespace}"})"#, "without by");
        refused(
            r#"count_values("v", x{namespace="${namespace}"}) by (pod)"#,
            "count_values",
        );
        refused(
            r#"sum(x{pod="${service}"}) by (pod)"#,
            "also the join label",
        );
        refused(
            r#"sum(x{namespace="${namespace}"}) by (pod) / sum(y) by (pod)"#,
            "the selector y has no namespace",
        );
        refused(
            r#"sum(x{namespace="${namespace}"}) by (pod) / sum(y{ns="${namespace}"}) by (pod)"#,
            "fills two labels",
        );
        refused(
            r#"sum(x{namespace="${namespace}"}) by (pod) / sum(y{namespace="${service}"}) by (pod)"#,
            "both",
        );
        refused(
            r#"x{namespace="${namespace}"} or absent(x{namespace="${namespace}"})"#,
            "absent()",
        );
        refused(r#"sum(x{namespace="${namespace}") by (pod)"#, "unbalanced");
        refused(
            r#"sum(x{namespace="${namespace}}) by (pod)"#,
            "unterminated",
        );
        refused(
            r#"sum(x{namespace="${namespace}"}) by (pod) ! 1"#,
            "unexpected",
        );
        refused(r#"sum(x{__name__="${service}"}) by (pod)"#, "internal");
    }
}

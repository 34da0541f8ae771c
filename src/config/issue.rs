//! A mistake in a config, policy or guardrail file, located by the file and the dotted
//! key; every loader reports in these so that `sluice config check` prints them all at once.

use std::fmt;
use std::path::PathBuf;

/// One mistake in a config file, located by the file and the dotted key.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    /// The file the mistake is in.
    pub file: PathBuf,
    pub(crate) key: String,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// Every mistake found in one load, in file order where there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigIssue>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the configuration has {} mistake(s):", self.0.len())?;
        for issue in &self.0 {
            writeln!(f, "  {issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Names the fields of struct `T` as its `Deserialize` impl knows them (after `rename`s),
/// by asking it to deserialize from a probe that answers only `deserialize_struct`.
///
/// Returns an empty slice for a type that is not a derived struct (a map, an enum, a
/// `try_from` wrapper): such a table has no fixed keys to suggest.
pub(crate) fn struct_fields<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(FieldProbe) {
        Err(ProbeError(Some(fields))) => fields,
        _ => &[],
    }
}

struct FieldProbe;

#[derive(Debug)]
struct ProbeError(Option<&'static [&'static str]>);

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field probe")
    }
}

impl std::error::Error for ProbeError {}

impl serde::de::Error for ProbeError {
    fn custom<M: fmt::Display>(_: M) -> Self {
        ProbeError(None)
    }
}

impl<'de> serde::Deserializer<'de> for FieldProbe {
    type Error = ProbeError;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeError> {
        Err(ProbeError(None))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, ProbeError> {
        Err(ProbeError(Some(fields)))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The known key closest to `word`, if it is close enough to be a typo: at most one edit
/// per three characters (Damerau–Levenshtein, so a swapped pair is one edit), at least one.
pub(crate) fn did_you_mean<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(word, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Reads a TOML file into `T`, reporting every key `T` does not know (named by its dotted
/// path, with a "did you mean" from `fields_at` when one is close) and, if the text does
/// not fit `T` at all, the parser's message too — so that a misspelt required key is named
/// beside the "missing field" it causes.
///
/// `fields_at` answers the known keys of the table at a dotted path split into segments
/// (`[]` is the top level; `["routes", "chat"]` a route); `None` when it does not know.
/// Returns the value (`None` when the text is not valid TOML or does not fit `T`) and the
/// issues, in the order the parser met them.
pub(crate) fn read_toml<T: serde::de::DeserializeOwned>(
    file: &std::path::Path,
    text: &str,
    fields_at: &dyn Fn(&[&str]) -> Option<&'static [&'static str]>,
) -> (Option<T>, Vec<ConfigIssue>) {
    let issue = |key: String, message: String| ConfigIssue {
        file: file.to_owned(),
        key,
        message,
    };
    let deserializer = match toml::Deserializer::parse(text) {
        Ok(d) => d,
        Err(e) => {
            return (
                None,
                vec![issue(String::new(), e.to_string().trim_end().into())],
            );
        }
    };
    let mut unknown = Vec::new();
    let parsed: Result<T, toml::de::Error> =
        serde_ignored::deserialize(deserializer, |path| unknown.push(path.to_string()));
    let mut issues: Vec<ConfigIssue> = unknown
        .iter()
        .map(|raw| {
            // serde_ignored writes `?` for the inside of an Option; a reader wants the key.
            let key = raw.replace(".?", "").replace("?.", "");
            let segments: Vec<&str> = key.split('.').collect();
            let (name, parent) = segments.split_last().expect("split yields one segment");
            let hint = fields_at(parent)
                .and_then(|known| did_you_mean(name, known))
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            issue(key.clone(), format!("unknown key{hint}"))
        })
        .collect();
    match parsed {
        Ok(value) => (Some(value), issues),
        Err(e) => {
            // The parser stopped at its first error, before it met the keys after it: find
            // them in the text's tables instead, wherever `fields_at` knows the keys.
            if let Ok(table) = text.parse::<toml::Table>() {
                let mut path = Vec::new();
                unknown_in_table(&table, &mut path, fields_at, &mut |key, hint| {
                    if !issues.iter().any(|i| i.key == key) {
                        issues.push(issue(key, format!("unknown key{hint}")));
                    }
                });
            }
            let message = e.to_string();
            // "missing field `stable`" right after "stabel: did you mean `stable`?" says
            // nothing new: the typo's line is the one to read.
            let explained = issues
                .iter()
                .filter_map(|i| i.message.split("did you mean `").nth(1))
                .filter_map(|rest| rest.split('`').next())
                .any(|field| message.contains(&format!("missing field `{field}`")));
            if !explained {
                issues.push(issue(String::new(), message.trim_end().into()));
            }
            (None, issues)
        }
    }
}

/// Walks `table` (at dotted `path`) and reports each key that `fields_at` does not list for
/// its table, with its "did you mean" hint (`; did you mean …?` or empty).
fn unknown_in_table(
    table: &toml::Table,
    path: &mut Vec<String>,
    fields_at: &dyn Fn(&[&str]) -> Option<&'static [&'static str]>,
    report: &mut dyn FnMut(String, String),
) {
    let known = {
        let segments: Vec<&str> = path.iter().map(String::as_str).collect();
        fields_at(&segments).filter(|k| !k.is_empty())
    };
    for (key, value) in table {
        if let Some(known) = known
            && !known.contains(&key.as_str())
        {
            let hint = did_you_mean(key, known)
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            let mut dotted = path.clone();
            dotted.push(key.clone());
            report(dotted.join("."), hint);
            continue;
        }
        path.push(key.clone());
        match value {
            toml::Value::Table(inner) => unknown_in_table(inner, path, fields_at, report),
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let toml::Value::Table(inner) = item {
                        path.push(i.to_string());
                        unknown_in_table(inner, path, fields_at, report);
                        path.pop();
                    }
                }
            }
            _ => {}
        }
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Route {
        stable: String,
        #[serde(default)]
        guardrails: Option<String>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        routes: std::collections::BTreeMap<String, Route>,
    }

    fn fields(parent: &[&str]) -> Option<&'static [&'static str]> {
        match parent {
            [] => Some(struct_fields::<Doc>()),
            ["routes", _] => Some(struct_fields::<Route>()),
            _ => None,
        }
    }

    #[test]
    fn the_probe_names_a_structs_fields() {
        assert_eq!(struct_fields::<Route>(), &["stable", "guardrails"]);
        assert!(struct_fields::<std::collections::BTreeMap<String, u8>>().is_empty());
    }

    #[test]
    fn close_words_are_suggested_and_far_ones_are_not() {
        let known = ["stable", "guardrails", "on_schema_failure"];
        assert_eq!(did_you_mean("stabel", &known), Some("stable"));
        assert_eq!(did_you_mean("guardrail", &known), Some("guardrails"));
        assert_eq!(did_you_mean("colour", &known), None);
        assert_eq!(did_you_mean("x", &known), None);
    }

    #[test]
    fn a_misspelt_required_key_is_named_beside_the_missing_field() {
        let text = "[routes.chat]\nstabel = \"v1\"\n";
        let (doc, issues) = read_toml::<Doc>(std::path::Path::new("c.toml"), text, &fields);
        assert!(doc.is_none());
        assert_eq!(issues[0].key, "routes.chat.stabel");
        assert_eq!(issues[0].message, "unknown key; did you mean `stable`?");
        // The "missing field" it causes says nothing new and is left out.
        assert_eq!(issues.len(), 1, "{issues:?}");
    }

    #[test]
    fn unknown_keys_after_the_first_error_are_named_too() {
        // `routes` fails first; `server` sorts after it and is never reached by the parser.
        let text = "[routes.chat]\nstabel = \"v1\"\n[zz]\nx = 1\n";
        let (_, issues) = read_toml::<Doc>(std::path::Path::new("c.toml"), text, &fields);
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["routes.chat.stabel", "zz"], "{issues:?}");
    }

    #[test]
    fn unknown_keys_without_a_close_match_are_still_named() {
        let text = "colour = 1\n[routes.chat]\nstable = \"v1\"\nguardrail = \"pii\"\n";
        let (doc, issues) = read_toml::<Doc>(std::path::Path::new("c.toml"), text, &fields);
        assert!(doc.is_some());
        let shown: Vec<String> = issues.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            shown,
            [
                "c.toml: colour: unknown key",
                "c.toml: routes.chat.guardrail: unknown key; did you mean `guardrails`?",
            ]
        );
    }
}

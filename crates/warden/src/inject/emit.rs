//! Writes a changed document back as block-style YAML that Kubernetes reads the same way.
//!
//! Why not the YAML library's own serializer: it targets YAML 1.2 and writes the string
//! `"yes"` as a plain `yes`, which Kubernetes (whose reader follows YAML 1.1) turns into a
//! boolean. This emitter quotes every string that either YAML 1.1 or 1.2 could read as
//! anything other than that string. It must never change the type or the text of a value.
//!
//! One ambiguity cannot be settled from the parsed value alone: the parser reads a plain
//! `0644` (YAML 1.1 octal, common in `defaultMode`) as the *string* "0644", exactly as it
//! reads a quoted `"0644"`. [`SourceScalars`] looks at the document's text to tell the two
//! apart; a text that appears both plain and quoted in one document is refused.

use std::collections::HashSet;
use std::fmt::Write as _;

use serde_yaml_ng::{Mapping, Value};

/// Why a document cannot be written back faithfully.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error(
        "the value {0:?} is written both plain and quoted; Kubernetes reads the plain one as a number or boolean \
         and the quoted one as a string, and after parsing they cannot be told apart: quote every use, or \
         write the number in decimal"
    )]
    AmbiguousScalar(String),
    #[error("a mapping key that is itself a mapping or a list is not supported")]
    ComplexKey,
}

/// The scalar texts a document's source writes plain and quoted, as far as a line scan can
/// tell (block style `key: value` and `- value` lines; flow collections are not looked into,
/// so their scalars count as neither).
#[derive(Debug, Default)]
pub struct SourceScalars {
    plain: HashSet<String>,
    quoted: HashSet<String>,
}

impl SourceScalars {
    pub fn scan(source: &str) -> Self {
        let mut found = Self::default();
        for line in source.lines() {
            let mut rest = line.trim_start();
            while let Some(r) = rest.strip_prefix("- ") {
                rest = r.trim_start();
            }
            let value = match rest.find(": ") {
                Some(i) => rest[i + 2..].trim_start(),
                None => rest,
            };
            if let Some(inner) = quoted_inner(value) {
                found.quoted.insert(inner.to_owned());
                continue;
            }
            let value = match value.find(" #") {
                Some(i) => &value[..i],
                None => value,
            }
            .trim_end();
            if !value.is_empty() && !value.starts_with(['[', '{', '|', '>', '&', '*', '!', '#']) {
                found.plain.insert(value.to_owned());
            }
        }
        found
    }
}

fn quoted_inner(value: &str) -> Option<&str> {
    let value = value.trim_end();
    for q in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
            return Some(&value[1..value.len() - 1]);
        }
    }
    None
}

/// Emits one document (without a `---` line); the result ends with a newline.
pub fn document(value: &Value, source: &SourceScalars) -> Result<String, EmitError> {
    let mut e = Emitter {
        out: String::new(),
        source,
    };
    match value {
        Value::Mapping(m) if !m.is_empty() => e.mapping(m, 0, false)?,
        Value::Sequence(s) if !s.is_empty() => e.sequence(s, 0, false)?,
        other => {
            let text = e.inline(other)?;
            e.out.push_str(&text);
            e.out.push('\n');
        }
    }
    Ok(e.out)
}

/// What a nested value follows: `key:` in a mapping, or `-` in a list.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Indicator {
    Key,
    Dash,
}

struct Emitter<'a> {
    out: String,
    source: &'a SourceScalars,
}

impl Emitter<'_> {
    fn indent(&mut self, n: usize) {
        self.out.extend(std::iter::repeat_n(' ', n));
    }

    fn mapping(&mut self, m: &Mapping, indent: usize, first_inline: bool) -> Result<(), EmitError> {
        for (i, (k, v)) in m.iter().enumerate() {
            if i > 0 || !first_inline {
                self.indent(indent);
            }
            let key = self.key(k)?;
            self.out.push_str(&key);
            self.out.push(':');
            self.after_indicator(v, indent, Indicator::Key)?;
        }
        Ok(())
    }

    fn sequence(
        &mut self,
        s: &[Value],
        indent: usize,
        first_inline: bool,
    ) -> Result<(), EmitError> {
        for (i, v) in s.iter().enumerate() {
            if i > 0 || !first_inline {
                self.indent(indent);
            }
            self.out.push('-');
            self.after_indicator(v, indent, Indicator::Dash)?;
        }
        Ok(())
    }

    /// After `key:` or `-` at `indent`. After a key, nested mappings go one level in on the
    /// next line and lists stay at the key's column (the layout `kubectl` writes); after a
    /// dash, a mapping or list starts on the same line, one level in.
    fn after_indicator(
        &mut self,
        v: &Value,
        indent: usize,
        after: Indicator,
    ) -> Result<(), EmitError> {
        let dash = after == Indicator::Dash;
        let (separator, list_indent) = if dash {
            (' ', indent + 2)
        } else {
            ('\n', indent)
        };
        match v {
            Value::Mapping(m) if !m.is_empty() => {
                self.out.push(separator);
                self.mapping(m, indent + 2, dash)
            }
            Value::Sequence(s) if !s.is_empty() => {
                self.out.push(separator);
                self.sequence(s, list_indent, dash)
            }
            Value::Tagged(t) => self.tagged(&t.tag.to_string(), &t.value, indent),
            other => self.scalar_after_indicator(other, indent),
        }
    }

    fn tagged(&mut self, tag: &str, v: &Value, indent: usize) -> Result<(), EmitError> {
        self.out.push(' ');
        self.out.push_str(tag);
        match v {
            Value::Mapping(m) if !m.is_empty() => {
                self.out.push('\n');
                self.mapping(m, indent + 2, false)
            }
            Value::Sequence(s) if !s.is_empty() => {
                self.out.push('\n');
                self.sequence(s, indent + 2, false)
            }
            other => self.scalar_after_indicator(other, indent),
        }
    }

    fn scalar_after_indicator(&mut self, v: &Value, indent: usize) -> Result<(), EmitError> {
        if let Value::String(s) = v
            && let Some(header) = literal_block_header(s)
        {
            // Literal block: multi-line text (embedded TOML, scripts) stays readable.
            self.out.push(' ');
            self.out.push_str(header);
            self.out.push('\n');
            let body = s.trim_end_matches('\n');
            for line in body.split('\n') {
                if !line.is_empty() {
                    self.indent(indent + 2);
                    self.out.push_str(line);
                }
                self.out.push('\n');
            }
            let trailing = s.len() - body.len();
            for _ in 1..trailing {
                self.out.push('\n');
            }
            return Ok(());
        }
        let text = self.inline(v)?;
        self.out.push(' ');
        self.out.push_str(&text);
        self.out.push('\n');
        Ok(())
    }

    /// A scalar, or an empty collection, on one line.
    fn inline(&self, v: &Value) -> Result<String, EmitError> {
        Ok(match v {
            Value::Null => "null".to_owned(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::String(s) => self.string(s)?,
            Value::Sequence(_) => "[]".to_owned(),
            Value::Mapping(_) => "{}".to_owned(),
            Value::Tagged(t) => format!("{} {}", t.tag, self.inline(&t.value)?),
        })
    }

    fn string(&self, s: &str) -> Result<String, EmitError> {
        if plain_is_safe(s) {
            return Ok(s.to_owned());
        }
        let plain_in_source = self.source.plain.contains(s);
        if plain_in_source && yaml11_reads_as_non_string(s) && parser_reads_plain_as_string(s) {
            // It was written plain and the parser kept it as a string: writing it plain
            // again gives Kubernetes exactly what the original gave it.
            if self.source.quoted.contains(s) {
                return Err(EmitError::AmbiguousScalar(s.to_owned()));
            }
            return Ok(s.to_owned());
        }
        Ok(double_quoted(s))
    }

    fn key(&self, k: &Value) -> Result<String, EmitError> {
        match k {
            Value::String(s) if plain_is_safe(s) => Ok(s.clone()),
            Value::String(s) => Ok(double_quoted(s)),
            Value::Mapping(_) | Value::Sequence(_) | Value::Tagged(_) => Err(EmitError::ComplexKey),
            other => self.inline(other),
        }
    }
}

/// Whether this parser turns the plain scalar `s` into the string `s` (as with `0644`,
/// unlike `true` or `12`): only then can a string value have come from a plain scalar.
fn parser_reads_plain_as_string(s: &str) -> bool {
    matches!(serde_yaml_ng::from_str::<Value>(s), Ok(Value::String(p)) if p == s)
}

/// `|`, `|-` or `|+` for text that a literal block reproduces exactly; `None` otherwise.
fn literal_block_header(s: &str) -> Option<&'static str> {
    if !s.contains('\n') || s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return None;
    }
    let body = s.trim_end_matches('\n');
    // A first line starting with blanks would need an indentation indicator; lines with
    // trailing blanks are kept by YAML but stripped by many editors: quote those instead.
    if body.is_empty()
        || body.trim_start_matches('\n').starts_with([' ', '\t'])
        || body
            .split('\n')
            .any(|l| l.ends_with([' ', '\t']) || l.contains('\u{feff}'))
        || s.contains(['\u{85}', '\u{2028}', '\u{2029}'])
    {
        return None;
    }
    Some(match s.len() - body.len() {
        0 => "|-",
        1 => "|",
        _ => "|+",
    })
}

/// Plain only for text that no YAML version reads as anything but this string, and that
/// has no character with a meaning in block context.
fn plain_is_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let second = s.chars().nth(1);
    let dash_option = first == '-'
        && !s.starts_with("---")
        && second.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-');
    if first.is_ascii_digit() {
        return is_quantity(s) && !yaml11_reads_as_non_string(s);
    }
    if !(first.is_ascii_alphabetic() || first == '/' || first == '_' || dash_option) {
        return false;
    }
    if s.ends_with([' ', ':'])
        || s.contains(": ")
        || s.contains(" #")
        || s.contains("  ")
        || yaml11_reads_as_non_string(s)
    {
        return false;
    }
    s.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '_' | '.' | '/' | '-' | ':' | '@' | '+' | '=' | '~' | '(' | ')' | ',' | '%' | ' '
            )
    })
}

/// Digits, an optional fraction, then letters only: `50m`, `16Mi`, `1.5Gi`, `10s`. Neither
/// YAML version reads these as numbers (an exponent needs digits after the letter).
fn is_quantity(s: &str) -> bool {
    let letters = s.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
    let number = &s[..s.len() - letters.len()];
    !letters.is_empty()
        && letters.chars().all(|c| c.is_ascii_alphabetic())
        && number.split('.').count() <= 2
        && !number.ends_with('.')
}

/// Whether a YAML 1.1 reader (Kubernetes) or a YAML 1.2 reader would resolve the plain
/// scalar `s` to a boolean, null or number. Errs towards "yes": the cost is a quote.
pub fn yaml11_reads_as_non_string(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF", "true", "True", "TRUE", "false", "False", "FALSE", "null", "Null", "NULL", "~", "",
        ".inf", ".Inf", ".INF", ".nan", ".NaN", ".NAN",
    ];
    if WORDS.contains(&s) {
        return true;
    }
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") {
        return true;
    }
    let t: String = unsigned.chars().filter(|&c| c != '_').collect();
    let all = |text: &str, ok: fn(char) -> bool| !text.is_empty() && text.chars().all(ok);
    if let Some(hex) = t.strip_prefix("0x") {
        return all(hex, |c| c.is_ascii_hexdigit());
    }
    if let Some(bin) = t.strip_prefix("0b") {
        return all(bin, |c| c == '0' || c == '1');
    }
    if let Some(oct) = t.strip_prefix("0o") {
        return all(oct, |c| ('0'..='7').contains(&c));
    }
    if all(&t, |c| c.is_ascii_digit()) {
        return true;
    }
    // Base 60 (YAML 1.1): 1:20, 1:20:30.5
    if t.contains(':') {
        let mut parts = t.split(':');
        let head_ok = parts.next().is_some_and(|p| all(p, |c| c.is_ascii_digit()));
        return head_ok
            && parts.all(|p| {
                let whole = p.split('.').next().unwrap_or("");
                all(whole, |c| c.is_ascii_digit()) && whole.len() <= 2
            });
    }
    t.chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && t.chars().any(|c| c.is_ascii_digit())
        && t.parse::<f64>().is_ok()
}

fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{85}' => out.push_str("\\N"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            '\u{feff}' => out.push_str("\\ufeff"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> (String, Value) {
        let value: Value = serde_yaml_ng::from_str(text).expect("test input parses");
        let out = document(&value, &SourceScalars::scan(text)).expect("emits");
        let again: Value = serde_yaml_ng::from_str(&out).expect("output parses");
        (out, again)
    }

    #[test]
    fn values_survive_a_round_trip() {
        let text = "a: \"yes\"\nb: \"0644\"\nc: \"1:20\"\nd: 'x: y'\ne: \"\"\nf: \" lead\"\ng: |\n  one\n  two\nh: \"a\\u0001b\"\ni: [1, \"2\", {x: [], y: {}}]\nj: \"multi\\n\\n\"\nk: ~\nl: 1.5\nm: \"-x\"\nn: \"#x\"\no: spiffe://example.org/ns/rag/sa/app\n";
        let original: Value = serde_yaml_ng::from_str(text).expect("parses");
        let (out, again) = round_trip(text);
        assert_eq!(original, again, "{out}");
        assert!(out.contains("a: \"yes\"\n"), "{out}");
        assert!(out.contains("g: |\n  one\n  two\n"), "{out}");
        assert!(
            out.contains("o: spiffe://example.org/ns/rag/sa/app\n"),
            "{out}"
        );
        assert!(out.contains("j: |+\n  multi\n\n"), "{out}");
    }

    #[test]
    fn plain_octal_stays_plain_and_quoted_stays_quoted() {
        let (out, _) = round_trip("mode: 0644\n");
        assert_eq!(out, "mode: 0644\n");
        let (out, _) = round_trip("mode: \"0644\"\n");
        assert_eq!(out, "mode: \"0644\"\n");
        // A plain `true` elsewhere is a boolean, so it says nothing about the string "true".
        let (out, _) = round_trip("a: true\nb: \"true\"\nc: \"12\"\nd: 12\n");
        assert_eq!(out, "a: true\nb: \"true\"\nc: \"12\"\nd: 12\n");
        let text = "a: 0644\nb: \"0644\"\n";
        let value: Value = serde_yaml_ng::from_str(text).expect("parses");
        assert!(matches!(
            document(&value, &SourceScalars::scan(text)),
            Err(EmitError::AmbiguousScalar(_))
        ));
    }

    #[test]
    fn yaml11_words_and_numbers_are_recognised() {
        for s in [
            "yes", "Off", "0644", "0x1F", "1_000", "1:20", "1e3", "-1.5", ".inf", "0b101",
        ] {
            assert!(yaml11_reads_as_non_string(s), "{s}");
        }
        for s in [
            "yesterday",
            "1.2.3",
            "10m",
            "32Mi",
            "v1",
            "nginx:1.25",
            "0xZZ",
        ] {
            assert!(!yaml11_reads_as_non_string(s), "{s}");
        }
        for s in ["50m", "16Mi", "1.5Gi", "--config", "-v"] {
            assert!(plain_is_safe(s), "{s}");
        }
        for s in [
            "0xff",
            "1e3",
            "1.2.3",
            "-",
            "---x",
            "- x",
            "-1",
            "2001-12-14",
        ] {
            assert!(!plain_is_safe(s), "{s}");
        }
    }
}

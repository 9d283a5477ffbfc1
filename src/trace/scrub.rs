//! The scrubber: what a trace (and a recorded fixture) may keep of a
//! request or response. Secret-looking headers and body fields become
//! `[scrubbed]`; card numbers (Luhn-valid runs of digits, also written with
//! spaces or dashes) keep only their last four digits.
//!
//! One scrubber serves both users: `facade::record` keeps the sandbox's
//! test cards readable (a recorded fixture must still trigger its scenario
//! rule) and leaves JSON numbers alone (a fixture must stay valid against
//! the contract); decision traces mask every card, test cards included, in
//! strings and numbers alike.

use std::borrow::Cow;
use std::collections::HashSet;

use serde_json::Value;

/// What a scrubbed value is replaced with.
pub const SCRUBBED: &str = "[scrubbed]";

/// Body field names always scrubbed (compared case-insensitively).
pub const BUILTIN_FIELDS: [&str; 13] = [
    "password",
    "secret",
    "client_secret",
    "api_key",
    "apikey",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "authorization",
    "cvc",
    "cvv",
    "pin",
];

/// Header names always scrubbed; any header whose name contains one of
/// [`SECRET_HEADER_WORDS`] is scrubbed too.
pub const SECRET_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// A header whose name contains one of these is scrubbed.
pub const SECRET_HEADER_WORDS: [&str; 5] = ["token", "secret", "key", "auth", "cookie"];

/// Whether the header `name` (lower case, as `http` keeps it) may carry a
/// secret.
pub fn is_secret_header(name: &str) -> bool {
    SECRET_HEADERS.contains(&name) || SECRET_HEADER_WORDS.iter().any(|w| name.contains(w))
}

/// Scrubs field names and masks card numbers.
#[derive(Clone, Debug)]
pub struct Scrubber {
    /// Field names scrubbed, lower case.
    fields: HashSet<String>,
    /// Card numbers (digits only) left readable.
    keep_cards: HashSet<String>,
    /// Fewest digits of a card number.
    min_digits: usize,
    /// Whether JSON numbers that look like a card are masked too (into a string).
    numbers: bool,
}

impl Scrubber {
    /// A scrubber for decision traces: the built-in field names plus
    /// `extra`, every card of 13 to 19 digits masked, in strings and numbers.
    pub fn for_traces(extra: &[String]) -> Scrubber {
        Scrubber {
            fields: fields(extra),
            keep_cards: HashSet::new(),
            min_digits: 13,
            numbers: true,
        }
    }

    /// A scrubber for recorded fixtures: the built-in field names plus
    /// `extra`; cards of 12 to 19 digits masked in strings, except `keep`.
    pub fn for_recording(extra: &[String], keep: impl Iterator<Item = String>) -> Scrubber {
        Scrubber {
            fields: fields(extra),
            keep_cards: keep.collect(),
            min_digits: 12,
            numbers: false,
        }
    }

    /// Whether a body field (or query parameter) named `name` is scrubbed.
    pub fn is_secret_field(&self, name: &str) -> bool {
        if self.fields.contains(name) {
            return true;
        }
        name.bytes().any(|b| b.is_ascii_uppercase())
            && self.fields.contains(&name.to_ascii_lowercase())
    }

    /// `v` with secret fields (at any depth, unless null) replaced by
    /// `[scrubbed]` and card numbers masked; `string` post-processes every
    /// string kept.
    pub fn json_with(&self, v: Value, string: &dyn Fn(String) -> String) -> Value {
        match v {
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, v)| {
                        if self.is_secret_field(&k) && !v.is_null() {
                            (k, Value::String(SCRUBBED.into()))
                        } else {
                            let v = self.json_with(v, string);
                            (k, v)
                        }
                    })
                    .collect(),
            ),
            Value::Array(a) => {
                Value::Array(a.into_iter().map(|v| self.json_with(v, string)).collect())
            }
            Value::String(s) => Value::String(string(self.text(&s).into_owned())),
            Value::Number(n) if self.numbers => {
                let digits = n.to_string();
                match self.text(&digits) {
                    Cow::Borrowed(_) => Value::Number(n),
                    Cow::Owned(masked) => Value::String(masked),
                }
            }
            other => other,
        }
    }

    /// `v` scrubbed (see [`Scrubber::json_with`]).
    pub fn json(&self, v: Value) -> Value {
        self.json_with(v, &|s| s)
    }

    /// A query string or form body (`a=1&b=2`), decoded, with secret
    /// parameters scrubbed and cards masked, encoded again.
    pub fn form(&self, s: &str) -> String {
        let mut out = form_urlencoded::Serializer::new(String::with_capacity(s.len()));
        for (k, v) in form_urlencoded::parse(s.as_bytes()) {
            let k = self.text(&k).into_owned();
            if self.is_secret_field(&k) || is_bracketed_secret(self, &k) {
                out.append_pair(&k, SCRUBBED);
            } else {
                out.append_pair(&k, &self.text(&v));
            }
        }
        out.finish()
    }

    /// `s` with every card number in it masked to its last four digits.
    pub fn text<'s>(&self, s: &'s str) -> Cow<'s, str> {
        mask_cards(s, self.min_digits, &self.keep_cards)
    }
}

/// `card[cvc]`, `payment_method_data[card][number]`: a form key whose last
/// bracketed part is a secret name.
fn is_bracketed_secret(s: &Scrubber, key: &str) -> bool {
    key.rsplit(['[', ']'])
        .find(|p| !p.is_empty())
        .is_some_and(|last| last != key && s.is_secret_field(last))
}

fn fields(extra: &[String]) -> HashSet<String> {
    BUILTIN_FIELDS
        .iter()
        .map(|s| (*s).to_owned())
        .chain(extra.iter().map(|s| s.to_ascii_lowercase()))
        .collect()
}

/// Whether `digits` (ASCII digits only) pass the Luhn check.
pub fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d - b'0');
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Largest number of digits of a card number.
const MAX_DIGITS: usize = 19;

/// `s` with every card number masked: a run of `min_digits` to 19 digits,
/// possibly in groups separated by single spaces or dashes, that passes the
/// Luhn check becomes `*` for every digit but the last four, which are kept
/// (`************4242`; separators are dropped). Within a longer run of
/// groups (`order 1234 4242 4242 4242 4242`), any window of whole groups
/// that is a card is masked. Numbers in `keep` (digits only) stay as they are.
pub fn mask_cards<'s>(s: &'s str, min_digits: usize, keep: &HashSet<String>) -> Cow<'s, str> {
    let b = s.as_bytes();
    // Fast path: not enough digits anywhere for a card.
    if b.iter().filter(|c| c.is_ascii_digit()).count() < min_digits {
        return Cow::Borrowed(s);
    }
    let mut out: Option<String> = None;
    let mut copied = 0; // bytes of `s` already in `out`
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A run: digit groups joined by single separators.
        let mut groups: Vec<(usize, usize)> = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            groups.push((start, j));
            if j + 1 < b.len() && matches!(b[j], b' ' | b'-') && b[j + 1].is_ascii_digit() {
                j += 1;
            } else {
                break;
            }
        }
        let run_end = j;
        // Windows of whole groups, leftmost first, longest first.
        let mut g = 0;
        while g < groups.len() {
            let mut matched = None;
            let mut digits = Vec::with_capacity(MAX_DIGITS);
            let mut end = g;
            let mut candidates = Vec::new();
            while end < groups.len() {
                let (gs, ge) = groups[end];
                digits.extend_from_slice(&b[gs..ge]);
                if digits.len() > MAX_DIGITS {
                    break;
                }
                if digits.len() >= min_digits {
                    candidates.push((end, digits.clone()));
                }
                end += 1;
            }
            for (end, digits) in candidates.into_iter().rev() {
                if luhn(&digits) {
                    matched = Some((end, digits));
                    break;
                }
            }
            match matched {
                Some((end, digits)) => {
                    let (from, to) = (groups[g].0, groups[end].1);
                    let text = std::str::from_utf8(&digits).unwrap_or_default();
                    if !keep.contains(text) {
                        let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
                        o.push_str(&s[copied..from]);
                        let masked = digits.len() - 4;
                        o.extend(std::iter::repeat_n('*', masked));
                        o.push_str(&text[masked..]);
                        copied = to;
                    }
                    g = end + 1;
                }
                None => g += 1,
            }
        }
        i = run_end.max(i + 1);
    }
    match out {
        Some(mut o) => {
            o.push_str(&s[copied..]);
            Cow::Owned(o)
        }
        None => Cow::Borrowed(s),
    }
}

/// JSON text that may be cut short (a truncated body), with the value of
/// every secret member (`"password": "…"`) replaced by `"[scrubbed]"`.
/// Structure is not checked: it works on the tokens it can see.
pub fn partial_json(s: &Scrubber, text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    // Reads a string token starting at `at` (a `"`): its end (exclusive).
    let string_end = |at: usize| {
        let mut j = at + 1;
        while j < b.len() {
            match b[j] {
                b'\\' => j += 2,
                b'"' => return j + 1,
                _ => j += 1,
            }
        }
        b.len()
    };
    while i < b.len() {
        if b[i] != b'"' {
            let next = text[i..].find('"').map_or(b.len(), |n| i + n);
            out.push_str(&text[i..next]);
            i = next;
            continue;
        }
        let end = string_end(i);
        out.push_str(&text[i..end]);
        let name = text
            .get(i + 1..end.saturating_sub(1).max(i + 1))
            .unwrap_or_default();
        i = end;
        // A member name: `"name"` then `:`.
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if j < b.len() && b[j] == b':' && s.is_secret_field(name) {
            out.push_str(&text[i..=j]);
            j += 1;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            if j >= b.len() || matches!(b[j], b'{' | b'[') {
                i = j;
                continue;
            }
            // Skip the scalar value.
            let value_end = if b[j] == b'"' {
                string_end(j)
            } else {
                text[j..].find([',', '}', ']']).map_or(b.len(), |n| j + n)
            };
            out.push('"');
            out.push_str(SCRUBBED);
            out.push('"');
            i = value_end;
        }
    }
    out
}

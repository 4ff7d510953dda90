//! The readable transaction syntax of `raftkv txn`.
//!
//! Compares (`--if`, all must hold):
//! - `value(KEY) OP VALUE` with OP one of `=`, `!=`, `<`, `>` (bytewise; false if KEY is missing)
//! - `version(KEY) OP N`, `create(KEY) OP N`, `mod(KEY) OP N` (0 for a missing key)
//! - `exists(KEY)`, `missing(KEY)`
//!
//! Operations (`--then`, `--else`):
//! - `put KEY VALUE`, `get KEY`, `del KEY`, `del-prefix PREFIX`, `del-range START END`
//!
//! Words may be double-quoted to hold spaces: `put greeting "hello world"`. A KEY inside
//! `target(...)` ends at the first `)`.

use raftkv_client::pb::{Compare, TxnOp};
use raftkv_client::txn::{self, Op};

/// Parses one `--if` compare.
pub fn parse_compare(text: &str) -> Result<Compare, String> {
    let bad = |why: &str| format!("compare {text:?}: {why}; e.g. 'value(k) = v', 'version(k) > 2', 'missing(k)'");
    let open = text.find('(').ok_or_else(|| bad("expected TARGET(KEY)"))?;
    let close = text[open..]
        .find(')')
        .map(|i| open + i)
        .ok_or_else(|| bad("missing ')'"))?;
    let target = text[..open].trim();
    let key = text[open + 1..close].to_string();
    if key.is_empty() {
        return Err(bad("empty key"));
    }
    let rest = text[close + 1..].trim();
    match target {
        "exists" | "missing" if !rest.is_empty() => Err(bad("exists(KEY) and missing(KEY) take nothing after them")),
        "exists" => Ok(txn::exists(key)),
        "missing" => Ok(txn::missing(key)),
        "value" | "version" | "create" | "mod" => {
            let (op, operand) = split_op(rest).ok_or_else(|| bad("expected an operator: =, !=, < or >"))?;
            if target == "value" {
                return Ok(txn::value(key, op, unquote(operand)));
            }
            let n: u64 = operand
                .parse()
                .map_err(|_| bad("expected a number after the operator"))?;
            Ok(match target {
                "version" => txn::version(key, op, n),
                "create" => txn::create_revision(key, op, n),
                _ => txn::mod_revision(key, op, n),
            })
        }
        _ => Err(bad(
            "unknown target; use value, version, create, mod, exists or missing",
        )),
    }
}

fn split_op(rest: &str) -> Option<(Op, &str)> {
    for (token, op) in [
        ("!=", Op::NotEqual),
        ("==", Op::Equal),
        ("=", Op::Equal),
        ("<", Op::Less),
        (">", Op::Greater),
    ] {
        if let Some(operand) = rest.strip_prefix(token) {
            return Some((op, operand.trim()));
        }
    }
    None
}

fn unquote(s: &str) -> String {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
        .to_string()
}

/// Splits on whitespace, keeping double-quoted words whole.
fn words(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut has_word = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                has_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if has_word {
                    out.push(std::mem::take(&mut current));
                    has_word = false;
                }
            }
            c => {
                current.push(c);
                has_word = true;
            }
        }
    }
    if quoted {
        return Err(format!("{text:?}: unbalanced double quote"));
    }
    if has_word {
        out.push(current);
    }
    Ok(out)
}

/// Parses one `--then` / `--else` operation.
pub fn parse_op(text: &str) -> Result<TxnOp, String> {
    let w = words(text)?;
    let args: Vec<&str> = w.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["put", key, value] => Ok(txn::put(*key, *value)),
        ["get", key] => Ok(txn::get(*key)),
        ["del", key] => Ok(txn::delete(*key)),
        ["del-prefix", prefix] => Ok(txn::delete_prefix(*prefix)),
        ["del-range", start, end] => Ok(txn::delete_range(*start, *end)),
        _ => Err(format!(
            "operation {text:?}: expected 'put KEY VALUE', 'get KEY', 'del KEY', 'del-prefix PREFIX' or 'del-range START END'"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_client::pb::{txn_op, CompareOp, CompareTarget};

    #[test]
    fn compares_parse() {
        let c = parse_compare("value(user/1) = \"hello world\"").unwrap();
        assert_eq!(
            (c.key.as_slice(), c.target, c.op, c.value.as_slice()),
            (
                &b"user/1"[..],
                CompareTarget::Value as i32,
                CompareOp::Equal as i32,
                &b"hello world"[..]
            )
        );
        let c = parse_compare("version(k) > 2").unwrap();
        assert_eq!(
            (c.target, c.op, c.number),
            (CompareTarget::Version as i32, CompareOp::Greater as i32, 2)
        );
        let c = parse_compare("mod(k)!=7").unwrap();
        assert_eq!(
            (c.target, c.op, c.number),
            (CompareTarget::ModRevision as i32, CompareOp::NotEqual as i32, 7)
        );
        let c = parse_compare("create(k) < 3").unwrap();
        assert_eq!(c.target, CompareTarget::CreateRevision as i32);
        let c = parse_compare("missing(lock)").unwrap();
        assert_eq!((c.target, c.exists), (CompareTarget::Exists as i32, false));
        assert!(parse_compare("exists(lock)").unwrap().exists);
    }

    #[test]
    fn bad_compares_say_what_is_wrong() {
        for (text, why) in [
            ("value k = v", "TARGET(KEY)"),
            ("value(k = v", "missing ')'"),
            ("value() = v", "empty key"),
            ("version(k) ~ 2", "operator"),
            ("version(k) > two", "number"),
            ("size(k) > 2", "unknown target"),
            ("exists(k) = 1", "take nothing"),
        ] {
            let err = parse_compare(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn operations_parse() {
        match parse_op("put greeting \"hello world\"").unwrap().op {
            Some(txn_op::Op::Put(p)) => assert_eq!((p.key, p.value), (b"greeting".to_vec(), b"hello world".to_vec())),
            other => panic!("{other:?}"),
        }
        match parse_op("del-prefix jobs/").unwrap().op {
            Some(txn_op::Op::Delete(d)) => assert!(d.prefix && d.key == b"jobs/"),
            other => panic!("{other:?}"),
        }
        match parse_op("put k \"\"").unwrap().op {
            Some(txn_op::Op::Put(p)) => assert!(p.value.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_op("get k").unwrap().op, Some(txn_op::Op::Get(_))));
        assert!(parse_op("put k").is_err());
        assert!(parse_op("put k \"unterminated").is_err());
        assert!(parse_op("frobnicate k").is_err());
    }
}

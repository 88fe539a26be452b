//! JSON text exactly as Python's `json.dumps(value, indent=2, sort_keys=True)` writes it,
//! which is how transformers saves `config.json`, `model.safetensors.index.json` and the
//! tokenizer's side files: so a synthetic folder's files are byte-identical to the hub's,
//! not merely equivalent. serde_json differs in two visible ways: floats (`1e-5` where
//! Python writes `1e-05`) and non-ASCII characters (Python escapes them by default).

use serde_json::Value;

/// `json.dumps(v, indent=2, sort_keys=True, ensure_ascii=ensure_ascii)` (no trailing
/// newline; transformers appends one).
pub fn dumps(v: &Value, ensure_ascii: bool) -> String {
    let mut out = String::new();
    write_value(v, 0, ensure_ascii, &mut out);
    out
}

fn write_value(v: &Value, level: usize, ascii: bool, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) if !n.is_f64() => out.push_str(&i.to_string()),
            (_, Some(u), _) if !n.is_f64() => out.push_str(&u.to_string()),
            (_, _, Some(f)) => out.push_str(&py_float(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_str(s, ascii, out),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                indent(level + 1, out);
                write_value(item, level + 1, ascii, out);
            }
            out.push('\n');
            indent(level, out);
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            // Python sorts by code point; for the UTF-8 keys here that is byte order.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                indent(level + 1, out);
                write_str(k, ascii, out);
                out.push_str(": ");
                write_value(&map[k.as_str()], level + 1, ascii, out);
            }
            out.push('\n');
            indent(level, out);
            out.push('}');
        }
    }
}

fn indent(level: usize, out: &mut String) {
    for _ in 0..level {
        out.push_str("  ");
    }
}

/// A JSON string with Python's escapes (`\uXXXX` for control characters, and for every
/// non-ASCII character when `ascii`, as UTF-16 surrogate pairs above U+FFFF).
fn write_str(s: &str, ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest digits that round-trip, in positional notation
/// when the decimal exponent is within [-4, 16), else `d.ddde-XX` with at least two
/// exponent digits; integral values keep a `.0`.
pub fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` prints the shortest round-trip mantissa: "1e-5", "2.6592e0".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if !(-4..16).contains(&exp) {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{mantissa}e{exp_sign}{:02}", exp.abs());
    }
    let body = if exp < 0 {
        format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            format!("{digits}{}.0", "0".repeat(int_len - digits.len()))
        } else {
            format!("{}.{}", &digits[..int_len], &digits[int_len..])
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_print_like_python_repr() {
        // Each pair is Python 3's repr() of the value.
        for (x, want) in [
            (1e-5, "1e-05"),
            (1e-6, "1e-06"),
            (0.0001, "0.0001"),
            (0.02, "0.02"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (10000.0, "10000.0"),
            (2.6592, "2.6592"),
            (0.48145466, "0.48145466"),
            (0.00392156862745098, "0.00392156862745098"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.0, "123456789012345.0"),
            (-2.5e-7, "-2.5e-07"),
            (1e100, "1e+100"),
        ] {
            assert_eq!(py_float(x), want, "{x}");
        }
    }

    #[test]
    fn dumps_matches_python_layout() {
        // json.dumps({"b": [1, 2.0], "a": {}, "c": [], "d": {"x": None, "y": "\t é"}},
        //            indent=2, sort_keys=True)
        let v = json!({"b": [1, 2.0], "a": {}, "c": [], "d": {"x": null, "y": "\t é"}});
        let want = "{\n  \"a\": {},\n  \"b\": [\n    1,\n    2.0\n  ],\n  \"c\": [],\n  \"d\": {\n    \"x\": null,\n    \"y\": \"\\t \\u00e9\"\n  }\n}";
        assert_eq!(dumps(&v, true), want);
        assert!(dumps(&v, false).contains("\"\\t é\""));
    }
}

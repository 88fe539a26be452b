//! HTML building blocks. Every string from a run (names, config values, captions,
//! generated text, errors) goes through [`esc`]; markup is only ever built here from
//! constants, so nothing a run contains can open a tag or a script.

use std::fmt::Write as _;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a URL for an `href`; only relative paths and data URIs are ever linked, and a
/// `javascript:` reference is neutralised all the same.
pub fn href(url: &str) -> String {
    if url
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("javascript:")
    {
        return "#".into();
    }
    esc(url)
}

/// Standard base64 (for thumbnails as data URIs).
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A number for a table cell: enough digits to compare runs.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.4e}")
    } else if a >= 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

/// A table cell holding a number; `data-v` lets the sort script order it numerically.
pub fn num_cell(v: Option<f64>) -> String {
    match v {
        Some(v) => format!("<td class=\"n\" data-v=\"{v}\">{}</td>", num(v)),
        None => "<td class=\"n\" data-v=\"\">-</td>".into(),
    }
}

/// A status badge (`completed`, `failed`, `running`...).
pub fn badge(state: &str) -> String {
    let class = match state {
        "completed" | "reused" => "ok",
        "failed" | "interrupted" => "bad",
        _ => "warn",
    };
    format!("<span class=\"badge {class}\">{}</span>", esc(state))
}

/// A table: escaped header cells, rows of ready-made `<td>` markup.
pub fn table(class: &str, header: &[&str], rows: &[String]) -> String {
    let mut s = format!("<table class=\"{class}\"><thead><tr>");
    for h in header {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        let _ = write!(s, "<tr>{r}</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

/// A `<td>` with escaped text.
pub fn td(text: &str) -> String {
    format!("<td>{}</td>", esc(text))
}

const STYLE: &str = r#"
body{font-family:-apple-system,"Segoe UI","DejaVu Sans",Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1600px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.2em;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:1em;margin:16px 0 6px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:after{content:" \2195";color:#aaa}
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:8px;overflow:auto;max-height:420px;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:12px}
.chart{border:1px solid #e3e3e3;padding:4px;margin:0;flex:1 1 560px;max-width:860px}
.chart svg{width:100%;height:auto;display:block}.chart figcaption{font-size:12px}
.badge{padding:1px 7px;border-radius:9px;font-size:12px;color:#fff}
.ok{background:#2a8a3a}.bad{background:#c0392b}.warn{background:#d68910}
.err{color:#c0392b;white-space:pre-wrap}.muted{color:#777}.up{color:#c0392b}.down{color:#2a8a3a}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;vertical-align:-1px}
img.thumb{max-width:160px;max-height:160px;display:block}
.ci{color:#666;font-size:11px;white-space:nowrap}.mark{margin-left:3px;font-weight:bold}
.mark.best{color:#2a8a3a}.mark.noise{color:#1f77b4}.mark.sig,.verdict.sig{color:#c0392b}
.verdict.sig{font-weight:bold}.verdict.noise{color:#1f77b4}
details summary{cursor:pointer}details table{margin:4px 0}
"#;

/// Click a header to sort by that column; cells with `data-v` sort as numbers, empty
/// ones last. No libraries, no network.
const SORT_JS: &str = r#"
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows),asc=th.dataset.asc!=='1';
      t.querySelectorAll('th').forEach(function(h){delete h.dataset.asc});th.dataset.asc=asc?'1':'0';
      function key(r){var c=r.cells[i];if(!c)return null;var v=c.getAttribute('data-v');
        if(v!==null){return v===''?null:parseFloat(v)}return c.textContent.trim().toLowerCase()}
      rows.sort(function(x,y){var a=key(x),c=key(y);if(a===c)return 0;if(a===null)return 1;if(c===null)return -1;
        return (a<c?-1:1)*(asc?1:-1)});
      rows.forEach(function(r){b.appendChild(r)});
    });
  });
});
"#;

/// A complete standalone page.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"generator\" content=\"harness {}\">\
         <title>{}</title><style>{STYLE}</style></head>\n<body>\n{body}\n\
         <script>{SORT_JS}</script>\n</body></html>\n",
        env!("CARGO_PKG_VERSION"),
        esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            esc("<script>alert('x')&\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;)&amp;&quot;&lt;/script&gt;"
        );
        assert_eq!(href("JavaScript:alert(1)"), "#");
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}

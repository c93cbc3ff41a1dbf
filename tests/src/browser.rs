//! Headless Chromium, to see the HTML report and the dashboard after their scripts ran.

use std::{path::Path, process::Command};

/// Loads a page in headless Chromium and returns the DOM after its scripts ran.
pub fn chromium_dom(page: &Path) -> String {
    chromium_dom_of(
        &format!("file://{}", page.display()),
        &page.with_extension("chromium-profile"),
    )
}

/// Loads `url` in headless Chromium (profile kept in `profile`) and returns the DOM after its
/// scripts ran for 5 s of virtual time.
pub fn chromium_dom_of(url: &str, profile: &Path) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium runs (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `attribute` on the element with `id` in an HTML text (attributes as Chromium
/// serializes them: double-quoted, entities escaped).
pub fn attribute(html: &str, id: &str, attribute: &str) -> Option<String> {
    let start = html.find(&format!("id=\"{id}\""))?;
    let tag_start = html[..start].rfind('<')?;
    let tag_end = start + html[start..].find('>')?;
    let tag = &html[tag_start..tag_end];
    let key = format!(" {attribute}=\"");
    let value_start = tag.find(&key)? + key.len();
    let value_end = value_start + tag[value_start..].find('"')?;
    Some(
        tag[value_start..value_end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&amp;", "&"),
    )
}

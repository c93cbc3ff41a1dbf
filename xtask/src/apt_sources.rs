//! The host's Debian archive, as its APT sources name it: `/etc/apt/sources.list` and
//! `/etc/apt/sources.list.d/` (`*.list` one-line entries, `*.sources` deb822 stanzas).

use std::{fs, path::Path};

use anyhow::bail;

/// One source entry: its types (`deb`, `deb-src`), archive URIs and suites.
#[derive(Debug, Default, PartialEq, Eq)]
struct Entry {
    types: Vec<String>,
    uris: Vec<String>,
    suites: Vec<String>,
    enabled: bool,
}

/// The URI of the host's main Debian archive: the first `deb` entry whose suite is the
/// release itself (`bookworm`, not `bookworm-security` or `-updates`) and whose URI is not the
/// security archive. `codename` is the host's release (`VERSION_CODENAME`).
pub fn main_archive(etc_apt: &Path, codename: &str) -> anyhow::Result<String> {
    let mut entries = Vec::new();
    if let Ok(text) = fs::read_to_string(etc_apt.join("sources.list")) {
        entries.extend(one_line_entries(&text));
    }
    let mut files: Vec<_> = fs::read_dir(etc_apt.join("sources.list.d"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    // APT reads them in this order.
    files.sort();
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        match file.extension().and_then(|e| e.to_str()) {
            Some("list") => entries.extend(one_line_entries(&text)),
            Some("sources") => entries.extend(deb822_entries(&text)),
            _ => {}
        }
    }
    let release_suites = [codename, "stable", "testing", "unstable", "sid"];
    entries
        .iter()
        .filter(|e| e.enabled && e.types.iter().any(|t| t == "deb"))
        .filter(|e| {
            e.suites
                .iter()
                .any(|s| release_suites.contains(&s.as_str()))
        })
        .flat_map(|e| &e.uris)
        .find(|uri| {
            !uri.contains("security")
                && ["http://", "https://", "file:/"]
                    .iter()
                    .any(|scheme| uri.starts_with(scheme))
        })
        .map(|uri| uri.trim_end_matches('/').to_string())
        .map_or_else(
            || {
                bail!(
                    "no Debian archive for {codename} in {0}/sources.list or {0}/sources.list.d",
                    etc_apt.display()
                )
            },
            Ok,
        )
}

/// The host's release codename (`VERSION_CODENAME` of /etc/os-release).
pub fn host_codename() -> String {
    fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .unwrap_or_default()
}

/// `deb [options] URI SUITE COMPONENT...` lines.
fn one_line_entries(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or_default();
            let mut words = line.split_whitespace();
            let kind = words.next()?;
            let mut next = words.next()?;
            if next.starts_with('[') {
                // Options run to the word that closes the bracket.
                while !next.ends_with(']') {
                    next = words.next()?;
                }
                next = words.next()?;
            }
            Some(Entry {
                types: vec![kind.to_string()],
                uris: vec![next.to_string()],
                suites: vec![words.next()?.to_string()],
                enabled: true,
            })
        })
        .collect()
}

/// Stanzas separated by blank lines, `Field: value` lines (continuations indented).
fn deb822_entries(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut entry = Entry {
        enabled: true,
        ..Default::default()
    };
    let mut fields = 0;
    for line in text.lines().chain([""]) {
        if line.trim().is_empty() {
            if fields > 0 {
                entries.push(std::mem::replace(
                    &mut entry,
                    Entry {
                        enabled: true,
                        ..Default::default()
                    },
                ));
            }
            fields = 0;
            continue;
        }
        if line.starts_with('#') || line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        fields += 1;
        let words = || value.split_whitespace().map(str::to_string).collect();
        match field.trim().to_ascii_lowercase().as_str() {
            "types" => entry.types = words(),
            "uris" => entry.uris = words(),
            "suites" => entry.suites = words(),
            "enabled" => entry.enabled = value.trim() != "no",
            _ => {}
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etc_apt(sources_list: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("sources.list"), sources_list).unwrap();
        fs::create_dir(dir.path().join("sources.list.d")).unwrap();
        for (name, text) in files {
            fs::write(dir.path().join("sources.list.d").join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn deb822_main_archive_not_security_nor_disabled() {
        let dir = etc_apt(
            "",
            &[
                (
                    "debian.sources",
                    "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
                     URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
                     Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                     Types: deb\nURIs: http://deb.debian.org/debian-security\n\
                     Suites: bookworm-security\nComponents: main\n",
                ),
                (
                    "a-disabled.sources",
                    "Enabled: no\nTypes: deb\nURIs: http://old.example/debian\nSuites: bookworm\n",
                ),
                (
                    "nodesource.sources.disabled-by-farm",
                    "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: bookworm\n",
                ),
            ],
        );
        assert_eq!(
            main_archive(dir.path(), "bookworm").unwrap(),
            "http://deb.debian.org/debian"
        );
    }

    #[test]
    fn one_line_entries_with_options_and_comments() {
        let dir = etc_apt(
            "# deb http://commented.example/debian bookworm main\n\
             deb-src http://src.example/debian bookworm main\n\
             deb [arch=amd64 signed-by=/k.gpg] http://security.debian.org/debian-security bookworm-security main\n\
             deb http://ftp.example/debian/ bookworm-updates main\n\
             deb [ arch=amd64 ] http://ftp.example/debian/ bookworm main contrib\n",
            &[(
                "cloud.list",
                "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n",
            )],
        );
        assert_eq!(
            main_archive(dir.path(), "bookworm").unwrap(),
            "http://ftp.example/debian"
        );
    }

    #[test]
    fn a_host_without_a_debian_archive_says_so() {
        let dir = etc_apt(
            "deb https://deb.nodesource.com/node_20.x nodistro main\n",
            &[],
        );
        let why = main_archive(dir.path(), "bookworm")
            .unwrap_err()
            .to_string();
        assert!(
            why.starts_with("no Debian archive for bookworm in "),
            "{why}"
        );
    }
}

//! `[policy] control_plane`: one URL or a list of replicas (`["https://cp-0:7443",
//! "https://cp-1:7443"]`), checked at config time, and the order the watch tries them in.

use serde::Deserialize;
use warden_config::{ConfigError, Errors};

/// As written: a string or an array of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawControlPlane {
    One(String),
    Many(Vec<String>),
}

/// The control-plane URLs, each an `https://host:port` the watch can use. Checked here,
/// not at the first connection attempt: a URL the watch can never use would otherwise only
/// show as warnings, retried forever.
pub(crate) fn control_plane_urls(
    at: &Errors<'_>,
    raw: Option<RawControlPlane>,
) -> Result<Vec<String>, ConfigError> {
    let (urls, listed) = match raw {
        None => return Ok(Vec::new()),
        Some(RawControlPlane::One(url)) => (vec![url], false),
        Some(RawControlPlane::Many(urls)) => (urls, true),
    };
    if urls.is_empty() {
        return Err(at.error(
            "policy.control_plane",
            "an empty list: give at least one https://host:port URL, or leave the key out",
        ));
    }
    for (i, url) in urls.iter().enumerate() {
        let key = if listed {
            format!("policy.control_plane[{i}]")
        } else {
            "policy.control_plane".to_owned()
        };
        if super::client::parse_url(url).is_err() {
            return Err(at.error(key, format!("{url:?}: must be an https://host:port URL")));
        }
        if urls[..i].contains(url) {
            return Err(at.error(key, format!("{url:?} is listed twice")));
        }
    }
    Ok(urls)
}

/// Which replica to try next. After a failure the next one is tried at once, and only when
/// every replica has failed in a row does the watch back off: losing one replica costs a
/// reconnect, not a back-off period.
#[derive(Debug)]
pub(crate) struct Rotation {
    len: usize,
    current: usize,
    failed_in_row: usize,
}

impl Rotation {
    /// Starts at a replica picked from `seed`, so a fleet of sidecars spreads over them.
    pub(crate) fn new(len: usize, seed: u64) -> Self {
        let len = len.max(1);
        Self {
            len,
            current: (seed % len as u64) as usize,
            failed_in_row: 0,
        }
    }

    pub(crate) fn current(&self) -> usize {
        self.current
    }

    /// The current replica served a snapshot.
    pub(crate) fn succeeded(&mut self) {
        self.failed_in_row = 0;
    }

    /// The current replica failed (or closed the stream): move to the next. Returns `true`
    /// when a whole round has failed and the caller should back off before trying again.
    pub(crate) fn failed(&mut self) -> bool {
        self.current = (self.current + 1) % self.len;
        self.failed_in_row += 1;
        if self.failed_in_row >= self.len {
            self.failed_in_row = 0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_replica_is_left_at_once_and_a_failed_round_backs_off() {
        let mut r = Rotation::new(3, 7);
        assert_eq!(r.current(), 1);
        assert!(!r.failed());
        assert_eq!(r.current(), 2);
        assert!(!r.failed());
        assert_eq!(r.current(), 0);
        assert!(r.failed(), "all three failed in a row");
        assert_eq!(r.current(), 1);
        assert!(!r.failed());
        r.succeeded();
        assert!(!r.failed());
        assert!(!r.failed());
        assert!(r.failed());
        let mut one = Rotation::new(1, 99);
        assert!(one.failed(), "one replica: back off after each failure");
        assert_eq!(one.current(), 0);
    }

    #[test]
    fn one_url_or_a_list_and_errors_name_the_entry() {
        let at = Errors { file: "f.toml" };
        let one = control_plane_urls(&at, Some(RawControlPlane::One("https://cp:7443".into())))
            .expect("one");
        assert_eq!(one, ["https://cp:7443"]);
        let many = control_plane_urls(
            &at,
            Some(RawControlPlane::Many(vec![
                "https://cp-0:7443".into(),
                "https://cp-1:7443".into(),
            ])),
        )
        .expect("list");
        assert_eq!(many.len(), 2);
        for (raw, key) in [
            (RawControlPlane::Many(vec![]), "policy.control_plane"),
            (
                RawControlPlane::Many(vec!["https://a:1".into(), "http://b:1".into()]),
                "policy.control_plane[1]",
            ),
            (
                RawControlPlane::Many(vec!["https://a:1".into(), "https://a:1".into()]),
                "policy.control_plane[1]",
            ),
            (
                RawControlPlane::One("https://a".into()),
                "policy.control_plane",
            ),
        ] {
            let e = control_plane_urls(&at, Some(raw)).expect_err(key);
            assert_eq!(e.key, key, "{e}");
        }
    }
}

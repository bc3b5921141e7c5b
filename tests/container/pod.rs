//! The files a pod of `deploy/kubernetes` sees, laid out on the host the way the kubelet lays
//! them out: the ConfigMap's `gateway.toml` (root-owned, 0644) and the Secret's three files
//! (root-owned, group `fsGroup` when the pod has one, the volume's `defaultMode`).

use std::{
    os::unix::fs::{PermissionsExt, chown},
    path::{Path, PathBuf},
};

use tempfile::TempDir;

use crate::{manifest::Manifest, support::random_b64};

/// How the Secret's files are owned.
#[derive(Clone, Copy, Debug)]
pub enum SecretLayout {
    /// As the manifest implies: group `fsGroup`, mode `defaultMode`.
    AsShipped,
    /// As the manifest was on 2026-11-30: no `fsGroup` (group root), mode 0400.
    Before20261130,
}

/// The secrets' values, which the test needs too.
pub struct Secrets {
    pub client_secret: String,
    pub redis_url: String,
}

/// A temporary directory with `config/gateway.toml` and `secrets/*`, removed when dropped.
pub struct PodFiles {
    dir: TempDir,
}

impl PodFiles {
    /// Lays out the files; the caller must be root (the kubelet is).
    pub fn create(manifest: &Manifest, layout: SecretLayout, secrets: &Secrets) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pleo-gateway-pod-")
            .tempdir()
            .unwrap();
        // Traversable by the gateway's user, as the kubelet's volume directories are.
        set_mode(dir.path(), 0o755);
        let files = PodFiles { dir };
        let config = files.config_dir();
        std::fs::create_dir(&config).unwrap();
        set_mode(&config, 0o755);
        let toml = config.join("gateway.toml");
        std::fs::write(&toml, &manifest.gateway_toml).unwrap();
        set_mode(&toml, 0o644);

        let secret_dir = files.secrets_dir();
        std::fs::create_dir(&secret_dir).unwrap();
        set_mode(&secret_dir, 0o755);
        let (group, mode) = match layout {
            SecretLayout::AsShipped => (manifest.fs_group, manifest.secret_mode),
            SecretLayout::Before20261130 => (0, 0o400),
        };
        for (name, value) in [
            ("client_secret", secrets.client_secret.clone()),
            ("redis_url", secrets.redis_url.clone()),
            ("encryption_keys", format!("{}\n", random_b64(32))),
        ] {
            let path = secret_dir.join(name);
            std::fs::write(&path, value).unwrap();
            chown(&path, Some(0), Some(group)).expect("chown a secret file (run as root)");
            set_mode(&path, mode);
        }
        files
    }

    /// Mounted at the manifest's `config` mount path.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// Mounted at the manifest's `secrets` mount path.
    pub fn secrets_dir(&self) -> PathBuf {
        self.dir.path().join("secrets")
    }

    /// The directory itself (for anything else the test puts beside the files).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Whether this process is root (it can lay out root-owned files and switch users).
pub fn is_root() -> bool {
    // The owner of a file we just created is our effective uid.
    let probe = tempfile::NamedTempFile::new().unwrap();
    std::os::unix::fs::MetadataExt::uid(&probe.as_file().metadata().unwrap()) == 0
}

//! Images for containers mode, built locally from binaries on the host — no registry needed.
//!
//! An image is a root filesystem holding one executable, the shared libraries `ldd` lists for
//! it and the dynamic loader, imported into the engine (`POST /images/create?fromSrc=-`, what
//! `docker import` does). Its tag is a hash of the files' contents, so a later run with the
//! same binaries reuses the image and a rebuilt binary gets a new one (older tags of the same
//! repository are removed when unused).
//!
//! Users with a registry can name images instead ([`ContainerImages`]), e.g. `redis:7-alpine`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bollard::query_parameters::{CreateImageOptions, ListImagesOptions, RemoveImageOptions};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::engine::DockerEngine;
use crate::TestkitError;

/// Repository of the locally built sockudo image.
pub const SOCKUDO_REPO: &str = "sockudo-testkit/sockudo";
/// Repository of the locally built Redis image.
pub const REDIS_REPO: &str = "sockudo-testkit/redis";
/// Where the sockudo binary sits in the built image.
const SOCKUDO_PATH: &str = "/usr/local/bin/sockudo";
/// Where redis-server sits in the built image.
const REDIS_PATH: &str = "/usr/bin/redis-server";
/// Bump to rebuild every cached image after a change of the layout below.
const LAYOUT_VERSION: &str = "sockudo-testkit rootfs v1";

/// Serialises image builds in this process (parallel tests would build the same image twice).
static BUILD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Which images containers mode runs. `None` builds the image locally from the host's
/// binaries (the `sockudo` binary the testkit finds, `redis-server` on PATH).
///
/// A named image is used as it is when the engine has it, and pulled otherwise. A sockudo
/// image's default command must start sockudo (it is configured only by environment
/// variables); a Redis image must have `redis-server` on its PATH (the official images do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerImages {
    /// The sockudo image, e.g. `my-registry/sockudo:1.2`.
    pub sockudo: Option<String>,
    /// The Redis image, e.g. `redis:7-alpine`.
    pub redis: Option<String>,
}

impl ContainerImages {
    /// Both images from the environment when set: `SOCKUDO_TESTKIT_SOCKUDO_IMAGE`,
    /// `SOCKUDO_TESTKIT_REDIS_IMAGE`; otherwise built locally.
    pub fn from_env() -> ContainerImages {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        ContainerImages {
            sockudo: var("SOCKUDO_TESTKIT_SOCKUDO_IMAGE"),
            redis: var("SOCKUDO_TESTKIT_REDIS_IMAGE"),
        }
    }
}

/// The sockudo image to run: the named one (pulled when missing), else one built from the
/// binary [`crate::sockudo_binary`] finds.
pub async fn sockudo_image(
    engine: &DockerEngine,
    images: &ContainerImages,
) -> Result<String, TestkitError> {
    if let Some(name) = &images.sockudo {
        return ensure_named(engine, name).await;
    }
    let binary = crate::sockudo_binary()?;
    build_binary_image(engine, SOCKUDO_REPO, &binary, SOCKUDO_PATH, &[SOCKUDO_PATH]).await
}

/// The Redis image to run: the named one (pulled when missing), else one built from the
/// host's `redis-server`.
pub async fn redis_image(
    engine: &DockerEngine,
    images: &ContainerImages,
) -> Result<String, TestkitError> {
    if let Some(name) = &images.redis {
        return ensure_named(engine, name).await;
    }
    let binary = find_on_path("redis-server").ok_or(TestkitError::ProgramNotFound {
        program: "redis-server",
        hint: "install it (`apt-get install redis-server`) to build the Redis image, or name one with ContainerImages::redis",
    })?;
    build_binary_image(engine, REDIS_REPO, &binary, REDIS_PATH, &["redis-server"]).await
}

/// Build (or reuse) `repo:<content hash>` holding `binary` at `path_in_image`, its shared
/// libraries and loader, with `cmd` as the default command. Returns the image name.
pub async fn build_binary_image(
    engine: &DockerEngine,
    repo: &str,
    binary: &Path,
    path_in_image: &str,
    cmd: &[&str],
) -> Result<String, TestkitError> {
    let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    let plan = {
        let (binary, path_in_image, cmd) =
            (binary.to_path_buf(), path_in_image.to_string(), cmd.clone());
        tokio::task::spawn_blocking(move || RootFs::plan(&binary, &path_in_image, &cmd))
            .await
            .map_err(|e| TestkitError::Docker(format!("planning the image failed: {e}")))??
    };
    let name = format!("{repo}:{}", plan.tag);
    let _guard = BUILD_LOCK.lock().await;
    if image_exists(engine, &name).await? {
        return Ok(name);
    }
    let started = std::time::Instant::now();
    let archive = tokio::task::spawn_blocking(move || plan.archive())
        .await
        .map_err(|e| TestkitError::Docker(format!("packing the image failed: {e}")))??;
    let size = archive.len();
    let changes = vec![
        "ENV PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        format!("CMD {}", json_array(&cmd)),
    ];
    let (repo_owned, tag) = match name.rsplit_once(':') {
        Some((r, t)) => (r.to_string(), t.to_string()),
        None => (name.clone(), "latest".to_string()),
    };
    let options = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo_owned),
        tag: Some(tag),
        changes,
        ..Default::default()
    };
    engine
        .call(&format!("import image {name}"), |d| async move {
            let mut progress = d.create_image(
                Some(options),
                Some(bollard::body_full(archive.into())),
                None,
            );
            while let Some(step) = progress.next().await {
                step?;
            }
            Ok(())
        })
        .await?;
    tracing::info!(image = %name, bytes = size, elapsed = ?started.elapsed(), "built a containers-mode image");
    remove_other_tags(engine, repo, &name).await;
    Ok(name)
}

async fn image_exists(engine: &DockerEngine, name: &str) -> Result<bool, TestkitError> {
    let owned = name.to_string();
    match engine
        .call(
            "inspect image",
            |d| async move { d.inspect_image(&owned).await },
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(TestkitError::Docker(message))
            if message.contains("404") || message.to_lowercase().contains("no such image") =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// A named image: present, or pulled (which needs its registry).
async fn ensure_named(engine: &DockerEngine, name: &str) -> Result<String, TestkitError> {
    if image_exists(engine, name).await? {
        return Ok(name.to_string());
    }
    let options = CreateImageOptions {
        from_image: Some(name.to_string()),
        ..Default::default()
    };
    engine
        .call(
            &format!("pull image {name} (not present locally)"),
            |d| async move {
                let mut progress = d.create_image(Some(options), None, None);
                while let Some(step) = progress.next().await {
                    step?;
                }
                Ok(())
            },
        )
        .await?;
    Ok(name.to_string())
}

/// Remove the repository's other tags (older builds) that no container uses. Best effort.
async fn remove_other_tags(engine: &DockerEngine, repo: &str, keep: &str) {
    let mut filters = std::collections::HashMap::new();
    filters.insert("reference".to_string(), vec![repo.to_string()]);
    let options = ListImagesOptions {
        filters: Some(filters),
        ..Default::default()
    };
    let Ok(images) = engine
        .call("list images", |d| async move {
            d.list_images(Some(options)).await
        })
        .await
    else {
        return;
    };
    for image in images {
        for tag in image
            .repo_tags
            .iter()
            .filter(|t| t.as_str() != keep && t.starts_with(&format!("{repo}:")))
        {
            let owned = tag.clone();
            // Not forced: an image in use by a running test stays.
            let removed = engine
                .call("remove old image", |d| async move {
                    d.remove_image(&owned, None::<RemoveImageOptions>, None)
                        .await
                })
                .await;
            tracing::debug!(image = %tag, ok = removed.is_ok(), "removing an older testkit image");
        }
    }
}

/// The files of an image, planned (and hashed) but not packed yet.
#[derive(Debug)]
struct RootFs {
    /// (host file, path in the image), the executable first.
    files: Vec<(PathBuf, String)>,
    tag: String,
}

impl RootFs {
    fn plan(binary: &Path, path_in_image: &str, cmd: &[String]) -> Result<RootFs, TestkitError> {
        let mut files = vec![(binary.to_path_buf(), path_in_image.to_string())];
        for library in shared_libraries(binary)? {
            let in_image = library.to_string_lossy().into_owned();
            if !files.iter().any(|(_, p)| *p == in_image) {
                files.push((library, in_image));
            }
        }
        let mut hasher = Sha256::new();
        hasher.update(LAYOUT_VERSION.as_bytes());
        hasher.update(json_array(cmd).as_bytes());
        for (host, in_image) in &files {
            hasher.update(in_image.as_bytes());
            hasher.update([0]);
            let mut file = std::fs::File::open(host)
                .map_err(|e| TestkitError::io(format!("read {}", host.display()), e))?;
            std::io::copy(&mut file, &mut hasher)
                .map_err(|e| TestkitError::io(format!("hash {}", host.display()), e))?;
        }
        let digest = hex::encode(hasher.finalize());
        let tag = digest.get(..16).unwrap_or(&digest).to_string();
        Ok(RootFs { files, tag })
    }

    /// The root filesystem as a tar archive: the files (the executable without debug info
    /// when `strip` is available: a debug build shrinks ~8x), their directories, and `/tmp`.
    fn archive(&self) -> Result<Vec<u8>, TestkitError> {
        let scratch = crate::util::scratch_dir("image")?;
        let result = self.archive_in(&scratch);
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    fn archive_in(&self, scratch: &Path) -> Result<Vec<u8>, TestkitError> {
        let io =
            |what: &str, e: std::io::Error| TestkitError::io(format!("pack the image: {what}"), e);
        let mut builder = tar::Builder::new(Vec::new());
        let mut dirs = BTreeSet::new();
        dirs.insert(PathBuf::from("tmp"));
        for (_, in_image) in &self.files {
            let relative = Path::new(in_image.trim_start_matches('/'));
            dirs.extend(
                relative
                    .ancestors()
                    .skip(1)
                    .filter(|a| !a.as_os_str().is_empty())
                    .map(Path::to_path_buf),
            );
        }
        for dir in &dirs {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(if dir == Path::new("tmp") {
                0o1777
            } else {
                0o755
            });
            header.set_size(0);
            header.set_mtime(0);
            builder
                .append_data(&mut header, dir, std::io::empty())
                .map_err(|e| io("directory", e))?;
        }
        for (index, (host, in_image)) in self.files.iter().enumerate() {
            let source = if index == 0 {
                stripped_copy(host, scratch).unwrap_or_else(|| host.clone())
            } else {
                host.clone()
            };
            let data = std::fs::read(&source).map_err(|e| io(&source.display().to_string(), e))?;
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o755);
            header.set_size(data.len() as u64);
            header.set_mtime(0);
            builder
                .append_data(
                    &mut header,
                    in_image.trim_start_matches('/'),
                    data.as_slice(),
                )
                .map_err(|e| io(in_image, e))?;
        }
        builder.into_inner().map_err(|e| io("finish", e))
    }
}

/// `strip --strip-debug` into `dir`; `None` when strip is missing or fails (the original is
/// used then).
fn stripped_copy(binary: &Path, dir: &Path) -> Option<PathBuf> {
    let out = dir.join("stripped");
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(binary)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    (status.success() && out.is_file()).then_some(out)
}

/// The absolute paths `ldd` lists for `binary` (libraries and the loader); empty for a
/// static executable.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, TestkitError> {
    let output = Command::new("ldd")
        .arg(binary)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            TestkitError::Docker(format!(
                "building an image from {} needs `ldd` (glibc's libc-bin): {e}",
                binary.display()
            ))
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
            || stdout.contains("statically linked")
        {
            return Ok(Vec::new());
        }
        return Err(TestkitError::Docker(format!(
            "ldd {} failed: {}",
            binary.display(),
            stderr.trim()
        )));
    }
    parse_ldd(&stdout).map_err(|missing| {
        TestkitError::Docker(format!(
            "{} needs {missing}, which ldd cannot find",
            binary.display()
        ))
    })
}

/// Parse `ldd` output: `name => /path (0x…)`, `/lib64/ld-linux-x86-64.so.2 (0x…)`,
/// `linux-vdso.so.1 (0x…)` (no file: skipped). `Err(name)` for a library that is not found.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(name.trim().to_string());
                }
                rest.split_whitespace().next().unwrap_or_default()
            }
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if target.starts_with('/') {
            out.push(PathBuf::from(target));
        }
    }
    Ok(out)
}

/// `["a","b"]` (a Dockerfile exec-form array).
fn json_array(items: &[String]) -> String {
    serde_json::Value::from(items.to_vec()).to_string()
}

/// The first executable file named `program` on PATH.
fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            Ok(vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libm.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ])
        );
        assert_eq!(
            parse_ldd("\tlibfoo.so.1 => not found\n"),
            Err("libfoo.so.1".to_string())
        );
    }

    #[test]
    fn json_array_is_exec_form() {
        assert_eq!(
            json_array(&["redis-server".to_string()]),
            r#"["redis-server"]"#
        );
    }
}

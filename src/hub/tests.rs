use super::*;

#[test]
fn ids_and_paths_are_told_apart() {
    let id = HubId::parse("sentence-transformers/all-MiniLM-L6-v2").unwrap();
    assert_eq!(id.repo, "sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!(id.revision(), "main");
    assert_eq!(
        id.folder_name(),
        "models--sentence-transformers--all-MiniLM-L6-v2"
    );
    let id = HubId::parse("BAAI/bge-small-en-v1.5@refs/pr/3").unwrap();
    assert_eq!(
        (id.repo.as_str(), id.revision()),
        ("BAAI/bge-small-en-v1.5", "refs/pr/3")
    );
    assert_eq!(HubId::parse("gpt2").unwrap().repo, "gpt2");
    for path in [
        "../models/all-MiniLM-L6-v2",
        "./model",
        "/abs/model",
        "a/b/c",
        "org/na me",
        "org/-x",
        "org/x.",
        "org/a--b",
        "org/x@",
        "org/x@a b",
        "",
    ] {
        assert_eq!(HubId::parse(path), None, "{path} is not an id");
    }
}

#[test]
fn the_environment_chooses_the_cache_as_huggingface_hub_does() {
    let env = |pairs: &[(&str, &str)]| {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubEnv::from_vars(move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    };
    let e = env(&[("HOME", "/h")]);
    assert_eq!(e.cache, PathBuf::from("/h/.cache/huggingface/hub"));
    assert_eq!(e.endpoint, "https://huggingface.co");
    assert!(!e.offline);
    let e = env(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]);
    assert_eq!(e.cache, PathBuf::from("/x/huggingface/hub"));
    let e = env(&[
        ("HOME", "/h"),
        ("HF_HOME", "~/hf"),
        ("XDG_CACHE_HOME", "/x"),
    ]);
    assert_eq!(e.cache, PathBuf::from("/h/hf/hub"));
    let e = env(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")]);
    assert_eq!(
        (e.cache.as_path(), e.cache_from),
        (Path::new("/c"), "HF_HUB_CACHE")
    );
    let e = env(&[
        ("HF_HUB_OFFLINE", "yes"),
        ("HF_ENDPOINT", "http://127.0.0.1:9/"),
    ]);
    assert!(e.offline);
    assert_eq!(e.endpoint, "http://127.0.0.1:9");
    assert!(env(&[("TRANSFORMERS_OFFLINE", "1")]).offline);
    assert!(!env(&[("HF_HUB_OFFLINE", "0")]).offline);
    assert_eq!(env(&[("HF_TOKEN", "t")]).token.as_deref(), Some("t"));
}

/// A cache as huggingface_hub lays it out: refs/main → snapshots/<commit>/ with links
/// into blobs/.
fn cache_with(files: &[&str]) -> (tempfile::TempDir, HubEnv, String) {
    let dir = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567".to_string();
    let storage = dir.path().join("models--org--m");
    std::fs::create_dir_all(storage.join("refs")).unwrap();
    std::fs::write(storage.join("refs/main"), &commit).unwrap();
    std::fs::create_dir_all(storage.join("blobs")).unwrap();
    for (i, f) in files.iter().enumerate() {
        let blob = storage.join(format!("blobs/{i:040}"));
        std::fs::write(&blob, "{}").unwrap();
        let link = storage.join("snapshots").join(&commit).join(f);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&blob, &link).unwrap();
    }
    let path = dir.path().to_path_buf();
    let env = HubEnv::from_vars(move |k| (k == "HF_HUB_CACHE").then(|| path.display().to_string()));
    (dir, env, commit)
}

fn quiet() -> Say {
    Arc::new(|_: &str| {})
}

/// Why `id` does not resolve in `env` (with downloads allowed or not), as the user reads it.
fn refusal(id: &str, env: &HubEnv, download: bool) -> String {
    resolve(
        &HubId::parse(id).unwrap(),
        Weights::Any,
        env,
        download,
        &quiet(),
    )
    .unwrap_err()
    .to_string()
}

#[test]
fn a_cached_model_resolves_through_refs_without_the_network() {
    let (_dir, env, commit) = cache_with(&["config.json", "tokenizer.json", "model.safetensors"]);
    for written in ["org/m", "org/m@main", &format!("org/m@{commit}")] {
        let id = HubId::parse(written).unwrap();
        let (folder, r) = resolve(&id, Weights::Any, &env, false, &quiet()).unwrap();
        assert_eq!(
            folder,
            env.cache.join("models--org--m/snapshots").join(&commit)
        );
        assert_eq!(r.commit, commit);
        assert_eq!(r.name(), "m");
    }
}

#[test]
fn what_is_not_cached_is_refused_with_what_to_run() {
    let (_dir, env, _) = cache_with(&["config.json", "tokenizer.json"]);
    let e = refusal("org/m", &env, false);
    assert!(
        e.contains("has no model.safetensors or model.pt")
            && e.contains("hf download org/m --revision main")
            && e.contains("hub.download is off"),
        "{e}"
    );
    let e = refusal("org/other@v2", &env, false);
    assert!(
        e.contains("`org/other` (revision `v2`) is not in the Hugging Face cache")
            && e.contains("models--org--other")
            && e.contains("hf download org/other --revision v2"),
        "{e}"
    );
    let offline = HubEnv {
        offline: true,
        ..env.clone()
    };
    let e = refusal("org/other", &offline, true);
    assert!(e.contains("HF_HUB_OFFLINE is set"), "{e}");
}

from tracked_train.redact import is_secret_key, redact, strip_userinfo


def test_secret_keys():
    for key in ["tracking.wandb_api_key", "x.token", "webhook.auth_token", "db.password", "a.client_secret"]:
        assert is_secret_key(key), key
    for key in ["tokenizer.vocab_size", "tokenizer.model_type", "train/tokens_seen", "model.d_model"]:
        assert not is_secret_key(key), key


def test_redact_values_and_uris():
    out = redact({"a.api_key": "k123", "a.uri": "https://bob:pw@host:5000/x", "a.n": 3, "a.token": None})
    assert out == {"a.api_key": "***", "a.uri": "https://host:5000/x", "a.n": 3, "a.token": None}
    assert strip_userinfo("sqlite:///mlflow.db") == "sqlite:///mlflow.db"


def test_secret_query_parameters_are_masked_names_kept():
    from tracked_train.redact import redact_text

    cases = {
        "postgresql://host/db?password=hunter2": "postgresql://host/db?password=***",
        "sqlite:///x.db?password=hunter2": "sqlite:///x.db?password=***",
        "https://host/hook?token=hunter2&n=1": "https://host/hook?token=***&n=1",
        "https://h/x?API_KEY=hunter2&apikey=hunter2&apiKey=hunter2": "https://h/x?API_KEY=***&apikey=***&apiKey=***",
        "https://a.blob.core.windows.net/c/b?sv=2022-11-02&sig=hunter2%2B%3D&se=2030":
            "https://a.blob.core.windows.net/c/b?sv=2022-11-02&sig=***&se=2030",
        "https://s3.example/b/k?X-Amz-Date=20240101&X-Amz-Signature=hunter2":
            "https://s3.example/b/k?X-Amz-Date=20240101&X-Amz-Signature=***",
        "https://h/cb#access_token=hunter2": "https://h/cb#access_token=***",
        "https://h/x?secret=hunter2&key=hunter2&auth=hunter2&sas=hunter2&credential=hunter2":
            "https://h/x?secret=***&key=***&auth=***&sas=***&credential=***",
        "https://bob:pw@h:5000/x?Token=hunter2": "https://h:5000/x?Token=***",
    }
    for uri, shown in cases.items():
        assert strip_userinfo(uri) == shown, uri
        assert "hunter2" not in redact_text(f"cannot open {uri!r}: refused"), uri
    # Words, not substrings: these are not credentials.
    for uri in ("https://h/x?keyword=a&tokenizer=b&passes=3&page=2", "mlruns", "https://h/x?token="):
        assert strip_userinfo(uri) == uri
    assert strip_userinfo("https://h/x?token=***") == "https://h/x?token=***"  # masking twice changes nothing
    assert redact({"tracking.mlflow.uri": "http://h:5000/?token=hunter2", "sweep.storage": "sqlite:///s.db?pwd=x"}) == {
        "tracking.mlflow.uri": "http://h:5000/?token=***", "sweep.storage": "sqlite:///s.db?pwd=***"}


def test_a_token_in_the_tracking_or_webhook_url_reaches_no_file_and_no_output(tmp_path):
    """A real run whose MLflow store URI and webhook URL carry `?token=`: the token is nowhere afterwards (run folder,
    MLflow store and artifacts, console); an unreachable server's one-line refusal names it without the token."""
    from conftest import cli, free_port, sets

    secret = "qs-canary-8086"
    r = cli("run", "--run-name", "qs", *sets("training.max_steps=3", f"tracking.mlflow.uri=sqlite:///mlflow.db?token={secret}"),
            "--tracker", "jsonl", "--tracker", "mlflow",
            "--tracker", f"webhook=http://127.0.0.1:{free_port()}/hook?token={secret}",
            cwd=tmp_path, env={"TRACKED_TRAIN_WEBHOOK_FLUSH_TIMEOUT": "1"})
    assert r.returncode == 0, r.stderr
    assert "sqlite:///mlflow.db?token=***" in r.stderr  # the store is still named, its token masked
    assert "were not delivered" in r.stderr  # the webhook tracker ran (its endpoint refuses)
    r2 = cli("run", "--run-name", "qs2", *sets("tracking.trackers=[jsonl, mlflow]", "training.max_steps=2"),
             cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}/?token={secret}"})
    assert r2.returncode == 2 and len(r2.stderr.strip().splitlines()) == 1, r2.stderr
    assert "token=***" in r2.stderr
    assert secret not in r.stdout + r.stderr + r2.stdout + r2.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    # The run folder, the MLflow store and the Logged Model's files are all there to be searched.
    assert {"mlflow.db", "config.yaml", "state.json", "MLmodel"} <= {p.name for p in files}
    assert [p for p in files if secret.encode() in p.read_bytes()] == []

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

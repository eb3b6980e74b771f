from __future__ import annotations

import kubenetmon


def test_public_api_is_explicit() -> None:
    assert sorted(kubenetmon.__all__) == sorted(
        [
            "BackpressureError", "BaseComponent", "ComponentConfig", "ComponentID", "ConfigError",
            "ConnectionClass", "ConntrackRecord", "Consumer", "CreateSettings", "Direction", "Endpoint",
            "ExporterFactory", "ExtensionFactory", "Flow", "FlowBatch", "Host", "Identity", "Kind",
            "PermanentError", "ProcessorFactory", "ReceiverFactory", "RetryableError", "Stability",
            "__version__", "hookimpl",
        ]
    )
    for name in kubenetmon.__all__:
        assert hasattr(kubenetmon, name), name

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


# The modules a plugin author imports from: each declares its public names, every declared name
# exists, and nothing public-looking is left undeclared (httpx's habit).
PUBLIC_MODULES = (
    "kubenetmon.component", "kubenetmon.compute", "kubenetmon.errors", "kubenetmon.flows", "kubenetmon.hookspecs",
    "kubenetmon.identity", "kubenetmon.testing",
)


def test_every_public_module_declares_its_api() -> None:
    import importlib
    import inspect

    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        declared = getattr(module, "__all__", None)
        assert declared is not None, f"{name} has no __all__"
        assert len(set(declared)) == len(declared), f"{name}.__all__ repeats a name"
        for attr in declared:
            assert hasattr(module, attr), f"{name}.__all__ names {attr!r}, which the module lacks"
        defined_here = {
            attr for attr, value in vars(module).items()
            if not attr.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
            and getattr(value, "__module__", None) == name
        }
        assert defined_here <= set(declared), f"{name} defines public {sorted(defined_here - set(declared))}"


def test_the_columnar_contract_is_reachable_from_the_package() -> None:
    from kubenetmon import flows

    for attr in ("FLOW_SCHEMA", "RECORD_SCHEMA", "flows_from_columns", "records_from_columns", "with_columns"):
        assert attr in flows.__all__
    assert kubenetmon.FlowBatch is flows.FlowBatch

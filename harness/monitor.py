"""The resource monitor and engine the SDK talks to, duck-typed like `pulumi.runtime.mocks.MockMonitor`.

The SDK hands us the real protobuf requests (from its executor threads); we decode them the way the
engine's plugin layer does and pass them to the `Deployment`.

Advertised features: only `secrets`. Without `outputValues`, Output inputs arrive as plain values,
unknowns as the unknown sentinel and secrets as the secret wrapper, which is what a dynamic provider
(acceptSecrets/acceptResources false) ends up seeing from the real engine. Without
`resourceReferences`, resources passed as inputs serialize as their id/URN, which is also what the
engine gives a provider that does not accept resources. Options the harness does not implement
(transforms, resource hooks, deletedWith, replaceWith) are therefore refused by the SDK with a clear
"not supported" error instead of being silently ignored. Without `aliasSpecs` the SDK sends aliases as
URNs, which the deployment honours.
"""

from __future__ import annotations

import sys
from typing import Any

from google.protobuf import empty_pb2
from pulumi.runtime import rpc
from pulumi.runtime.proto import engine_pb2, resource_pb2

from .deployment import STACK_REFERENCE_TYPE, Deployment, Registration, make_urn
from .provider_host import to_struct

_SEVERITIES = {
    engine_pb2.DEBUG: "debug",
    engine_pb2.INFO: "info",
    engine_pb2.WARNING: "warning",
    engine_pb2.ERROR: "error",
}


def split_secrets(props: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Deserialized top-level props -> (plain values, names of the secret keys)."""
    plain: dict[str, Any] = {}
    secret: set[str] = set()
    for key, value in props.items():
        if rpc.is_rpc_secret(value):
            secret.add(key)
        plain[key] = rpc.unwrap_rpc_secret(value)
    return plain, secret


def wrap_secrets(props: dict[str, Any], secret: set[str]) -> dict[str, Any]:
    return {k: rpc.wrap_rpc_secret(v) if k in secret else v for k, v in props.items()}


class HarnessMonitor:
    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment

    def _urn(self, parent: str, type_: str, name: str) -> str:
        d = self.deployment
        return make_urn(d.stack, d.project, parent, type_, name)

    def SupportsFeature(self, request: Any) -> Any:
        return resource_pb2.SupportsFeatureResponse(hasSupport=request.id == "secrets")

    def GetDeploymentInfo(self, request: Any) -> Any:
        return resource_pb2.DeploymentInfo(supportedFeatures=[resource_pb2.RESOURCE_MONITOR_FEATURE_SECRETS])

    def RegisterResource(self, request: Any) -> Any:
        urn = self._urn(request.parent, request.type, request.name)
        inputs, secret = split_secrets(rpc.deserialize_properties(request.object, keep_unknowns=True))
        dependencies = list(dict.fromkeys(
            [*request.dependencies, *(u for deps in request.propertyDependencies.values() for u in deps.urns)]
        ))  # fmt: skip
        outcome = self.deployment.register(
            Registration(
                urn=urn,
                type=request.type,
                name=request.name,
                custom=request.custom,
                parent=request.parent,
                inputs=inputs,
                secret_inputs=secret,
                dependencies=dependencies,
                property_dependencies={k: list(v.urns) for k, v in request.propertyDependencies.items()},
                protect=bool(request.protect),
                retain_on_delete=bool(request.retainOnDelete),
                delete_before_replace=request.deleteBeforeReplace,
                additional_secret_outputs=list(request.additionalSecretOutputs),
                ignore_changes=list(request.ignoreChanges),
                replace_on_changes=list(request.replaceOnChanges),
                provider=request.provider,
                alias_urns=list(request.aliasURNs),
            )
        )
        return resource_pb2.RegisterResourceResponse(
            urn=urn, id=outcome.id, object=to_struct(wrap_secrets(outcome.outputs, outcome.secret_outputs))
        )

    def RegisterResourceOutputs(self, request: Any) -> Any:
        outputs, secret = split_secrets(rpc.deserialize_properties(request.outputs, keep_unknowns=True))
        self.deployment.register_outputs(request.urn, outputs, secret)
        return empty_pb2.Empty()

    def ReadResource(self, request: Any) -> Any:
        urn = self._urn(request.parent, request.type, request.name)
        if request.type != STACK_REFERENCE_TYPE:
            raise self.deployment.fail(
                f"reading existing resources ({request.type} {request.name!r}, get/import) is not supported by the "
                "harness; dynamic providers cannot read without state either",
                urn,
            )
        props = rpc.deserialize_properties(request.properties)
        name = str(rpc.unwrap_rpc_secret(props.get("name") or request.id))
        outputs, secret = self.deployment.read_stack_reference(urn, name)
        state = {"name": name, "outputs": wrap_secrets(outputs, secret), "secretOutputNames": sorted(secret)}
        return resource_pb2.ReadResourceResponse(urn=urn, properties=to_struct(state))

    def Invoke(self, request: Any) -> Any:
        raise Exception(f"invoke {request.tok!r} is not supported by the harness (no provider plugins here)")

    def Call(self, request: Any) -> Any:
        raise Exception(f"call {request.tok!r} is not supported by the harness (no provider plugins here)")

    def SignalAndWaitForShutdown(self, request: Any) -> Any:
        return empty_pb2.Empty()


class HarnessEngine:
    """Receives `pulumi.log.*` messages (the engine's Log RPC) and keeps them as diagnostics."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment

    def Log(self, request: Any) -> Any:
        severity = _SEVERITIES.get(request.severity, "info")
        if severity != "debug":
            self.deployment.diagnose(severity, request.message, request.urn)
            print(f"{severity}: {request.message}", file=sys.stderr)
        return empty_pb2.Empty()

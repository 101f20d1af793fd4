"""The embedded calculator environment as a NeMo Gym resources server (Gym 0.4.0's API).

Gym's `simple_agent` runs the tool loop: it POSTs each tool call's arguments to `/<tool name>` and feeds
the response body back to the model as the tool's output, then POSTs the finished response to
`/verify`. The tool and the verifier are the project's own (`gymtrl.env.calculator`, `gymtrl.env.tasks`,
stdlib only), so a model scores the same here as in the builtin loop: the tool answers in plain text
("904", not the JSON string "\\"904\\""), exactly what `run_tool` returns there.

Gym starts this file as `python app.py` in its own venv; `GYMTRL_SRC` (set by the evaluate and
collect stages) is the folder that holds the `gymtrl` package.
"""

import os
import sys

sys.path.insert(0, os.environ["GYMTRL_SRC"])

from fastapi import Body, FastAPI  # noqa: E402
from fastapi.responses import PlainTextResponse  # noqa: E402
from pydantic import ConfigDict  # noqa: E402

from gymtrl.env.calculator import run_tool  # noqa: E402
from gymtrl.env.records import final_text  # noqa: E402
from gymtrl.env.tasks import verify  # noqa: E402
from nemo_gym.base_resources_server import (  # noqa: E402
    BaseResourcesServerConfig,
    BaseRunRequest,
    BaseVerifyRequest,
    BaseVerifyResponse,
    SimpleResourcesServer,
)


class CalculatorConfig(BaseResourcesServerConfig):
    pass


class CalculatorRunRequest(BaseRunRequest):
    model_config = ConfigDict(extra="allow")  # the task's own fields: expected_answer, family, ...


class CalculatorVerifyRequest(CalculatorRunRequest, BaseVerifyRequest):
    pass


class CalculatorVerifyResponse(BaseVerifyResponse):
    model_config = ConfigDict(extra="allow")
    extracted_answer: str | None


class CalculatorResourcesServer(SimpleResourcesServer):
    config: CalculatorConfig

    def setup_webserver(self) -> FastAPI:
        app = super().setup_webserver()
        # Any other path is a tool call: the calculator, or a tool that does not exist, which gets the
        # builtin loop's error text instead of a 404 page.
        app.post("/{tool}")(self.tool)
        return app

    async def tool(self, tool: str, arguments: dict = Body(default_factory=dict)) -> PlainTextResponse:
        return PlainTextResponse(run_tool(tool, arguments))

    async def verify(self, body: CalculatorVerifyRequest) -> CalculatorVerifyResponse:
        task = body.model_dump()
        output = task["response"]["output"]
        reward, extracted = verify(task, final_text(output))
        return CalculatorVerifyResponse(**task, reward=reward, extracted_answer=extracted)


if __name__ == "__main__":
    CalculatorResourcesServer.run_webserver()

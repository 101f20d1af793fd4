"""The calculator tool: arithmetic only, parsed with `ast` (never `eval` of model text)."""

from __future__ import annotations

import ast
import operator
from fractions import Fraction

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_MAX_ABS = 10**15
_MAX_LEN = 200


class CalculatorError(ValueError):
    pass


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise CalculatorError("division by zero")
        value = _BINOPS[type(node.op)](left, right)
        if abs(value) > _MAX_ABS:
            raise CalculatorError("number too large")
        return Fraction(value)
    raise CalculatorError(f"unsupported expression element: {type(node).__name__}")


def format_number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


def calculate(expression: str) -> str:
    """'12 * (50 / 60)' -> '10'. Raises CalculatorError for anything that is not plain arithmetic."""
    if not isinstance(expression, str) or not expression.strip():
        raise CalculatorError("empty expression")
    if len(expression) > _MAX_LEN:
        raise CalculatorError("expression too long")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise CalculatorError("not an arithmetic expression") from None
    return format_number(_eval(tree))


def run_tool(name: str, arguments) -> str:
    """Executes one tool call the way the environment does; errors become the tool's text result."""
    if name != "calculator":
        return f"Error: unknown tool {name!r}"
    if not isinstance(arguments, dict) or not isinstance(arguments.get("expression"), str):
        return 'Error: arguments must be {"expression": "<arithmetic>"}'
    try:
        return calculate(arguments["expression"])
    except CalculatorError as err:
        return f"Error: {err}"

"""Test-and-demo laboratory: namespaces and CNI invocations on this machine.

Shared by tests/ and demo/ so both build nodes and pods the same way.  Every
namespace made here carries a random suffix and is removed by name.
"""

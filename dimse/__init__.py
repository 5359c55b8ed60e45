"""DIMSE-C messages, services, Query/Retrieve, associations, server and tools."""

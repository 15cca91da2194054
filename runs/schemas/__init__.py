"""The wire models of the Runs API (pydantic), shared by the API and the Python SDK: requests and
answers of runs, of schedules, and of what is around them."""

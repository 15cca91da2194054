FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY runs ./runs
COPY workers ./workers
COPY config ./config
RUN pip install --no-cache-dir .
ENV RUNS_API_HOST=0.0.0.0
EXPOSE 8000
CMD ["runs", "api"]

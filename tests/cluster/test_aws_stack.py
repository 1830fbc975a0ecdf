"""boto3 and pyarrow against the stack: DynamoDB (moto server), SQS (ElasticMQ), S3 (s3proxy)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import boto3
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tradepulse.config import Settings

Kwargs = Callable[[str], dict[str, Any]]


def test_dynamodb_conditional_write_keeps_the_newer_sequence(
    aws_kwargs: Kwargs, unique: Callable[[str], str]
) -> None:
    ddb = boto3.client("dynamodb", **aws_kwargs("dynamodb"))
    table = unique("latest")
    ddb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    try:
        ddb.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1})

        def put(seq: int, price: str) -> None:
            ddb.put_item(
                TableName=table,
                Item={"pk": {"S": "AAPL"}, "seq": {"N": str(seq)}, "price": {"N": price}},
                ConditionExpression="attribute_not_exists(pk) OR seq < :seq",
                ExpressionAttributeValues={":seq": {"N": str(seq)}},
            )

        put(5, "190.5")
        with pytest.raises(ClientError) as info:
            put(3, "180.0")  # older: must not overwrite
        assert info.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
        put(7, "191.25")
        item = ddb.get_item(TableName=table, Key={"pk": {"S": "AAPL"}}, ConsistentRead=True)
        assert item["Item"]["seq"] == {"N": "7"}
        assert item["Item"]["price"] == {"N": "191.25"}
    finally:
        ddb.delete_table(TableName=table)


def test_sqs_send_receive_delete(aws_kwargs: Kwargs, unique: Callable[[str], str]) -> None:
    sqs = boto3.client("sqs", **aws_kwargs("sqs"))
    url = sqs.create_queue(QueueName=unique("dlq"))["QueueUrl"]
    try:
        sqs.send_message(
            QueueUrl=url,
            MessageBody='{"reason": "negative price"}',
            MessageAttributes={"attempts": {"DataType": "Number", "StringValue": "3"}},
        )
        got = sqs.receive_message(
            QueueUrl=url, WaitTimeSeconds=2, MessageAttributeNames=["All"], VisibilityTimeout=30
        )["Messages"]
        assert len(got) == 1
        assert got[0]["Body"] == '{"reason": "negative price"}'
        assert got[0]["MessageAttributes"]["attempts"]["StringValue"] == "3"
        sqs.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
        again = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)
        assert again.get("Messages", []) == []
    finally:
        sqs.delete_queue(QueueUrl=url)


def test_s3_object_and_parquet_through_pyarrow(
    cluster_settings: Settings, aws_kwargs: Kwargs, unique: Callable[[str], str]
) -> None:
    kw = aws_kwargs("s3")
    s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}), **kw)
    bucket = cluster_settings.s3_bucket
    try:
        s3.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
            raise
    prefix = unique("cold")
    s3.put_object(Bucket=bucket, Key=f"{prefix}/hello.txt", Body=b"hello")
    assert s3.get_object(Bucket=bucket, Key=f"{prefix}/hello.txt")["Body"].read() == b"hello"

    endpoint = urlsplit(kw["endpoint_url"])
    fs = pafs.S3FileSystem(
        endpoint_override=endpoint.netloc,
        scheme=endpoint.scheme,
        access_key=kw.get("aws_access_key_id"),
        secret_key=kw.get("aws_secret_access_key"),
        region=kw["region_name"],
    )
    table = pa.table({"price": [190.5, 191.0], "size": [100, 5], "sequence_number": [1, 2]})
    key = f"{bucket}/{prefix}/trades/date=2025-01-02/ticker=AAPL/p0-0-1.snappy.parquet"
    pq.write_table(table, key, filesystem=fs, compression="snappy")

    raw = s3.get_object(Bucket=bucket, Key=key.split("/", 1)[1])["Body"].read()
    assert pq.read_table(io.BytesIO(raw)).equals(table)
    dataset = ds.dataset(
        f"{bucket}/{prefix}/trades", filesystem=fs, format="parquet", partitioning="hive"
    )
    got = dataset.to_table().to_pylist()
    assert [(r["ticker"], str(r["date"]), r["sequence_number"]) for r in got] == [
        ("AAPL", "2025-01-02", 1),
        ("AAPL", "2025-01-02", 2),
    ]

    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": o["Key"]} for o in listed], "Quiet": True}
    )

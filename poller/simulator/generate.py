"""Seeded, realistic Waiqin365 task data: Chinese content, people, customers, feedback."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

# Times on the wire are minute-precision Beijing wall time.
TIME_FORMAT = "%Y-%m-%d %H:%M"

TYPE_NAMES = (
    "陈列检查", "新品铺货", "价格巡查", "客户回访", "库存盘点", "促销执行", "投诉处理", "合同续签",
    "门店拜访", "竞品调研", "物料投放", "账款催收",
)
SOURCES = (("拜访计划", "20001"), ("客户投诉", "20002"), ("促销活动", "20003"),
           ("巡店检查", "20004"), ("总部下发", "20005"))
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = ("伟", "芳", "娜", "敏", "静", "磊", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀英",
         "建华", "志强", "海燕", "晓东", "丽华")
CITIES = ("上海", "杭州", "南京", "苏州", "成都", "武汉", "广州", "深圳", "北京", "西安")
SHOPS = ("联华超市", "华润万家", "永辉超市", "好又多", "便利蜂", "全家便利店", "百佳", "物美")
ACTIONS = (
    "请于{deadline}前到{customer}完成{type}，并上传现场照片",
    "{customer}反馈{type}问题，请尽快上门处理并反馈结果",
    "本周内完成{customer}的{type}，注意核对货架价签",
    "配合区域经理完成{customer}{type}，记录竞品信息",
)
FEEDBACK = (
    "已到店检查，陈列符合要求", "库存不足，已通知经销商补货", "店长不在，约定明天再访",
    "价签已全部更换", "客户对新品反馈良好，下周追加订单", "已拍照上传，请查收",
    "发现竞品促销，已记录价格", "问题已处理完毕，客户签字确认",
)


class Generator:
    """Deterministic source of ids, people and texts for one seed."""

    def __init__(self, seed: int, types: int) -> None:
        self.rng = random.Random(seed)
        self.users = [self._person() for _ in range(24)]
        self.customers = [str(7_269_195_022_934_000_000 + self.rng.randrange(10**12))
                          for _ in range(60)]
        self.customer_names = {c: f"{self.rng.choice(CITIES)}{self.rng.choice(SHOPS)}"
                               for c in self.customers}
        self.types = {str(10001 + i): TYPE_NAMES[i % len(TYPE_NAMES)] + ("" if i < len(
            TYPE_NAMES) else f"{i // len(TYPE_NAMES) + 1}") for i in range(max(1, types))}
        self._ids: set[str] = set()

    def _person(self) -> dict[str, str]:
        name = self.rng.choice(SURNAMES) + self.rng.choice(GIVEN)
        return {"name": name, "id": str(4_622_857_986_008_000_000 + self.rng.randrange(10**12))}

    def task_id(self) -> str:
        """A fresh, unique, Java-long-like task id."""
        while True:
            candidate = str(6_881_395_042_000_000_000 + self.rng.randrange(10**12))
            if candidate not in self._ids:
                self._ids.add(candidate)
                return candidate

    def visit_id(self) -> str:
        return str(6_881_395_042_783_000_000 + self.rng.randrange(10**12))

    def receivers(self) -> list[dict[str, str]]:
        return [dict(p) for p in self.rng.sample(self.users, self.rng.randint(1, 3))]

    def feedback_text(self) -> str:
        return self.rng.choice(FEEDBACK)

    def task(self, created: datetime, modified: datetime) -> dict[str, Any]:
        """A task created at `created` and last modified at `modified` (canonical values)."""
        rng = self.rng
        type_id = rng.choice(list(self.types))
        customer = rng.choice(self.customers)
        deadline = created + timedelta(days=rng.randint(1, 14), minutes=rng.randrange(600))
        source = rng.choice(SOURCES) if rng.random() < 0.8 else (None, None)
        content = rng.choice(ACTIONS).format(
            deadline=deadline.strftime("%m月%d日"), customer=self.customer_names[customer],
            type=self.types[type_id])
        task: dict[str, Any] = {
            "task_id": self.task_id(), "task_type_id": type_id, "task_content": content,
            "customer_id": customer, "execute_demand": rng.choice((0, 1, 1, 2)),
            "task_source_name": source[0], "task_source_id": source[1],
            "visit_implement_id": self.visit_id() if rng.random() < 0.6 else None,
            "creator": dict(rng.choice(self.users)), "receivers": self.receivers(),
            "feedback_deadline": deadline.strftime(TIME_FORMAT),
            "create_time": created.strftime(TIME_FORMAT),
            "modify_time": modified.strftime(TIME_FORMAT),
            "task_status": 0, "status": 1, "feedback_detail": [],
            "latest_feedback_time": None, "latest_feedback_content": None,
        }
        status = rng.choice((0, 0, 1, 1, 1, 2, 2, 3))
        if status:
            count = rng.randint(1, 3)
            span = max(1, int((modified - created).total_seconds() // 60))
            times = sorted(created + timedelta(minutes=rng.randrange(span + 1))
                           for _ in range(count))
            task["feedback_detail"] = [
                {"feedback_content": self.feedback_text(), "feedback_visit_id": self.visit_id(),
                 "feedback_time": t.strftime(TIME_FORMAT)} for t in times]
            task["latest_feedback_time"] = task["feedback_detail"][-1]["feedback_time"]
            task["latest_feedback_content"] = task["feedback_detail"][-1]["feedback_content"]
        task["task_status"] = status
        if rng.random() < 0.06:
            task["status"] = 0  # deleted tasks still come back from queryTask, with status 0
        return task

    def seed_tasks(self, count: int, days: int, now: datetime) -> list[dict[str, Any]]:
        """`count` tasks created over the last `days` days, modified between creation and now."""
        now = now.replace(second=0, microsecond=0)
        span = max(1, days * 24 * 60)
        tasks = []
        for _ in range(count):
            created = now - timedelta(minutes=self.rng.randrange(span))
            remaining = int((now - created).total_seconds() // 60)
            modified = created + timedelta(minutes=self.rng.randrange(remaining + 1))
            tasks.append(self.task(created, modified))
        return tasks

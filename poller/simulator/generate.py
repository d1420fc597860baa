"""Seeded, realistic Waiqin365 task data: Chinese content, people, customers, feedback."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from typing import Any, Final

# Times on the wire are minute-precision Beijing wall time.
TIME_FORMAT = "%Y-%m-%d %H:%M"
# Seeding works in whole minutes of Beijing wall time since this day: integer arithmetic and
# cached day strings instead of datetime arithmetic and strftime (a million tasks in seconds).
EPOCH: Final = date(1970, 1, 1)
MINUTES_PER_DAY: Final = 24 * 60
HOURS_MINUTES: Final = tuple(f"{m // 60:02d}:{m % 60:02d}" for m in range(MINUTES_PER_DAY))

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


class Minutes:
    """Beijing wall-clock minutes as integers, formatted the way the API writes times."""

    def __init__(self) -> None:
        self._days: dict[int, date] = {}
        self._day_text: dict[int, str] = {}
        self._short: dict[int, str] = {}

    @staticmethod
    def of(moment: datetime) -> int:
        """The minute number of `moment`'s wall time (seconds dropped); use Beijing datetimes."""
        days = (moment.date() - EPOCH).days
        return days * MINUTES_PER_DAY + moment.hour * 60 + moment.minute

    def day(self, minute: int) -> date:
        number = minute // MINUTES_PER_DAY
        found = self._days.get(number)
        if found is None:
            found = self._days[number] = EPOCH + timedelta(days=number)
        return found

    def text(self, minute: int) -> str:
        """`yyyy-MM-dd HH:mm`, as TIME_FORMAT would write it."""
        number = minute // MINUTES_PER_DAY
        day = self._day_text.get(number)
        if day is None:
            day = self._day_text[number] = self.day(minute).isoformat()
        return f"{day} {HOURS_MINUTES[minute % MINUTES_PER_DAY]}"

    def month_day(self, minute: int) -> str:
        """`MM月dd日`, the way task texts name a deadline."""
        number = minute // MINUTES_PER_DAY
        short = self._short.get(number)
        if short is None:
            short = self._short[number] = self.day(minute).strftime("%m月%d日")
        return short


class Generator:
    """Deterministic source of ids, people and texts for one seed.

    People (creator, receivers) are shared dicts: treat generated tasks as read-only and
    replace a field rather than editing it in place.
    """

    def __init__(self, seed: int, types: int, *, late_feedback: float = 0.0) -> None:
        if not 0.0 <= late_feedback <= 1.0:
            raise ValueError(f"late_feedback must be a fraction in [0, 1], got {late_feedback!r}")
        self.rng = random.Random(seed)
        self.late_feedback = late_feedback
        self.users = [self._person() for _ in range(24)]
        self.customers = [str(7_269_195_022_934_000_000 + self.rng.randrange(10**12))
                          for _ in range(60)]
        self.customer_names = {c: f"{self.rng.choice(CITIES)}{self.rng.choice(SHOPS)}"
                               for c in self.customers}
        self.types = {str(10001 + i): TYPE_NAMES[i % len(TYPE_NAMES)] + ("" if i < len(
            TYPE_NAMES) else f"{i // len(TYPE_NAMES) + 1}") for i in range(max(1, types))}
        self._type_ids = list(self.types)
        self.minutes = Minutes()
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
        """1-3 people from the user pool (shared dicts: copy before editing one)."""
        return self.rng.sample(self.users, self.rng.randint(1, 3))

    def feedback_text(self) -> str:
        return self.rng.choice(FEEDBACK)

    def task(self, created: datetime, modified: datetime) -> dict[str, Any]:
        """A task created at `created` and last modified at `modified` (canonical values)."""
        return self._task(self.minutes.of(created), self.minutes.of(modified))

    def _task(self, created: int, modified: int) -> dict[str, Any]:
        rng, minutes = self.rng, self.minutes
        type_id = rng.choice(self._type_ids)
        customer = rng.choice(self.customers)
        deadline = created + rng.randint(1, 14) * MINUTES_PER_DAY + rng.randrange(600)
        source = rng.choice(SOURCES) if rng.random() < 0.8 else (None, None)
        content = rng.choice(ACTIONS).format(
            deadline=minutes.month_day(deadline), customer=self.customer_names[customer],
            type=self.types[type_id])
        task: dict[str, Any] = {
            "task_id": self.task_id(), "task_type_id": type_id, "task_content": content,
            "customer_id": customer, "execute_demand": rng.choice((0, 1, 1, 2)),
            "task_source_name": source[0], "task_source_id": source[1],
            "visit_implement_id": self.visit_id() if rng.random() < 0.6 else None,
            "creator": rng.choice(self.users), "receivers": self.receivers(),
            "feedback_deadline": minutes.text(deadline),
            "create_time": minutes.text(created), "modify_time": minutes.text(modified),
            "task_status": 0, "status": 1, "feedback_detail": [],
            "latest_feedback_time": None, "latest_feedback_content": None,
        }
        status = rng.choice((0, 0, 1, 1, 1, 2, 2, 3))
        if status:
            span = max(1, modified - created)
            times = sorted(created + rng.randrange(span + 1) for _ in range(rng.randint(1, 3)))
            self._give_feedback(task, times)
        task["task_status"] = status
        if rng.random() < 0.06:
            task["status"] = 0  # deleted tasks still come back from queryTask, with status 0
        return task

    def _give_feedback(self, task: dict[str, Any], times: list[int]) -> None:
        task["feedback_detail"] = [
            {"feedback_content": self.feedback_text(), "feedback_visit_id": self.visit_id(),
             "feedback_time": self.minutes.text(t)} for t in times]
        task["latest_feedback_time"] = task["feedback_detail"][-1]["feedback_time"]
        task["latest_feedback_content"] = task["feedback_detail"][-1]["feedback_content"]

    def _date_feedback_late(self, task: dict[str, Any], modified: int, now: int) -> None:
        # The vendor's own sample record: feedback dated years after the task's modify_time.
        # Only drawn when the option is on, so the default data stays the same for a seed.
        times = sorted(modified + 1 + self.rng.randrange(now - modified)
                       for _ in task["feedback_detail"])
        task["feedback_detail"] = [{**entry, "feedback_time": self.minutes.text(t)}
                                   for entry, t in zip(task["feedback_detail"], times,
                                                       strict=True)]
        task["latest_feedback_time"] = task["feedback_detail"][-1]["feedback_time"]

    def seed_tasks(self, count: int, days: int, now: datetime) -> list[dict[str, Any]]:
        """`count` tasks created over the last `days` days, modified between creation and now;
        with `late_feedback`, that fraction of tasks with feedback has it dated after
        modify_time (up to now)."""
        end = self.minutes.of(now)
        span = max(1, days * MINUTES_PER_DAY)
        rng, tasks = self.rng, []
        for _ in range(count):
            created = end - rng.randrange(span)
            modified = created + rng.randrange(end - created + 1)
            task = self._task(created, modified)
            if (self.late_feedback and task["feedback_detail"] and modified < end
                    and rng.random() < self.late_feedback):
                self._date_feedback_late(task, modified, end)
            tasks.append(task)
        return tasks

# ruff: noqa: RUF001  (real Chinese descriptions use full-width punctuation)
"""A fixture whose tools are described in Chinese or in English, for ``[index] model = "auto"``.

    FIXTURE_LANG=zh FIXTURE_TOOLS=6 python -m tests.servers.described     # stdio

FIXTURE_LANG: ``zh`` (default; descriptions from real Chinese MCP servers: 12306-mcp, howtocook-mcp,
trends-hub, Bazi) or ``en`` (descriptions from the reference MCP servers). FIXTURE_TOOLS: serve
only the first N tools of that table (default: all 12). FIXTURE_START_DELAY: seconds to wait before
serving stdio (so a test can fix the order in which upstreams connect). Every tool takes ``text``
and returns it.
"""

from __future__ import annotations

import os
import time

from mcp.server.mcpserver import MCPServer

ZH = [
    ("get_tickets", "查询12306余票信息。"),
    ("get_current_date", "获取当前日期，以上海时区（Asia/Shanghai, UTC+8）为准，返回格式为 yyyy-MM-dd。"),
    ("what_to_eat", "不知道吃什么？根据人数直接推荐适合的菜品组合"),
    ("get_recipe", "根据菜谱名称或ID查询指定菜谱的完整详情，包括食材、步骤等"),
    ("weibo_trending", "获取微博热搜榜，包含时事热点、社会现象、娱乐新闻、明星动态及网络热议话题的实时热门中文资讯"),
    ("chinese_calendar", "获取指定公历时间（默认今天）的黄历信息。"),
    ("get_stations", "根据城市名称查询该城市所有火车站的名称及车站代码。"),
    ("train_route", "查询特定列车车次在指定区间内的途径车站、到站时间、出发时间及停留时间等详细经停信息。"),
    ("zhihu_trending", "获取知乎热榜，包含时事热点、社会话题、科技动态、娱乐八卦等多领域的热门问答和讨论的中文资讯"),
    ("all_recipes", "获取所有菜谱，返回菜谱名称和简介的列表"),
    (
        "recipes_by_category",
        "根据分类查询菜谱，可选分类有: 水产、早餐、调味料、甜品、饮品、荤菜、半成品、汤羹、主食、素菜",
    ),
    ("bazi_detail", "根据时间（公历或农历）、性别来获取八字信息。"),
]
EN = [
    ("get_current_time", "Get current time in a specific timezones"),
    ("convert_time", "Convert time between timezones"),
    ("git_commit", "Records changes to the repository"),
    ("fetch", "Fetches a URL from the internet and optionally extracts its contents as markdown."),
    ("write_file", "Create a new file or completely overwrite an existing file with new content."),
    ("list_directory", "Get a detailed listing of all files and directories in a specified path."),
    ("create_entities", "Create multiple new entities in the knowledge graph"),
    ("read_file", "Read the complete contents of a file from the file system."),
    ("git_status", "Shows the working tree status"),
    ("search_nodes", "Search for nodes in the knowledge graph based on a query"),
    ("move_file", "Move or rename files and directories."),
    ("git_log", "Shows the commit logs"),
]

TABLE = EN if os.environ.get("FIXTURE_LANG", "zh") == "en" else ZH
COUNT = int(os.environ.get("FIXTURE_TOOLS", str(len(TABLE))))

app = MCPServer("described")


def _echo(text: str) -> str:
    return text


for _name, _description in TABLE[:COUNT]:
    app.add_tool(_echo, name=_name, description=_description)


if __name__ == "__main__":
    time.sleep(float(os.environ.get("FIXTURE_START_DELAY", "0")))
    app.run()

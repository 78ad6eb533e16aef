from twisted.application.service import ServiceMaker

dashd = ServiceMaker(
    "dashd",
    "dashd.tap",
    "Device management dashboard for Mongoose OS and mDash devices",
    "dashd",
)
